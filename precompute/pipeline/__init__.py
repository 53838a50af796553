"""The pipeline: stream a corpus through the model once and write a store.

- ``run``: the pass (``run_precompute``): load, stream batches, update every unit's state, write;
- ``accumulate``: the streaming per-unit state (top/bottom-k, quantile sample, moments, histogram);
- ``polysemanticity``: the score functions applied to that state.
"""

from precompute.pipeline.run import PrecomputeConfig, run_precompute

__all__ = ["PrecomputeConfig", "run_precompute"]
