"""Sparse autoencoders, in SAELens's format, loading apart from training (as SAELens separates them):

- ``load``: ``load_sae`` (a SAELens folder or a pretrained release) -> ``LoadedSAE``, and ``hook_width``;
- ``train``: ``train_sae`` (SAELens's trainer on our model and corpus), ``evaluate_sae`` (held-out
  explained variance, L0, dead features) and ``train_on_activations`` (any activation batches).

The settings (``TrainSAEConfig``, ``SAEHyperparams``) live in ``neurodash.config``.
"""

from neurodash.config import SAEHyperparams, TrainSAEConfig
from precompute.sae.load import METRICS_FILE, LoadedSAE, hook_width, load_sae
from precompute.sae.train import SAEMetrics, TrainResult, evaluate_sae, train_on_activations, train_sae

__all__ = [
    "METRICS_FILE",
    "LoadedSAE",
    "SAEHyperparams",
    "SAEMetrics",
    "TrainResult",
    "TrainSAEConfig",
    "evaluate_sae",
    "hook_width",
    "load_sae",
    "train_on_activations",
    "train_sae",
]
