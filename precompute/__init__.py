"""The precompute pipeline: the only package that imports torch, TransformerLens, SAELens, datasets."""

from neurodash.units import parse_layers
from precompute.pipeline import PrecomputeConfig, run_precompute

__all__ = ["PrecomputeConfig", "parse_layers", "run_precompute"]
