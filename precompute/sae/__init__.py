"""Sparse autoencoders: loading one (a SAELens folder or release) and training one (SAELens's trainer)."""

from precompute.sae.train import (
    METRICS_FILE,
    LoadedSAE,
    SAEHyperparams,
    TrainSAEConfig,
    evaluate_sae,
    hook_width,
    load_sae,
    train_on_activations,
    train_sae,
)

__all__ = [
    "METRICS_FILE",
    "LoadedSAE",
    "SAEHyperparams",
    "TrainSAEConfig",
    "evaluate_sae",
    "hook_width",
    "load_sae",
    "train_on_activations",
    "train_sae",
]
