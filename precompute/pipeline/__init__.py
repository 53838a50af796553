"""The pipeline: stream a corpus through the model once and write a store.

- ``run``: ``run_precompute``: set up the sources to track, run the pass, write every table;
- ``stream``: the pass itself: each batch through the model once, every source's state updated;
- ``accumulate``: the streaming per-unit state (top/bottom-k, quantile sample, moments, histogram),
  handed over as an ``AccumulatorResult``;
- ``tables``: an ``AccumulatorResult`` (and the units' directions) -> the store's tables;
- ``polysemanticity``: the score functions applied to that state.
- ``exact``: sums that add up to the same bits in any order (``ExactSum``);
- ``shard``: which blocks of batches a shard reads; ``state``: the whole pass's state as a file
  (shards, checkpoints), and the checks that states belong together.

The settings (``PrecomputeConfig``, ``AccumulatorConfig``) live in ``neurodash.config``.
"""

from precompute.pipeline.run import PrecomputeConfig, run_precompute

__all__ = ["PrecomputeConfig", "run_precompute"]
