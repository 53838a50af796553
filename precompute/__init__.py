"""The precompute pipeline: the only package that imports torch, TransformerLens, SAELens, datasets."""

from precompute.pipeline import PrecomputeConfig, parse_layers, run_precompute

__all__ = ["PrecomputeConfig", "parse_layers", "run_precompute"]
