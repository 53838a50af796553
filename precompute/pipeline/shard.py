"""Which windows a shard reads: the corpus's batches in blocks, the blocks dealt round-robin.

A run's batches are numbered in corpus order and grouped into blocks of ``block_batches``; shard
``I/N`` reads the blocks ``b`` with ``b % N == I`` (every shard still tokenizes the corpus up to its
last block, but runs the model on its own blocks only). A block is also the unit of exact sums
(``precompute.pipeline.exact``: within a block, float64 in batch order; blocks add up exactly) and
of checkpoints, so one process, N shards, and a run stopped and resumed all do the same arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from neurodash.config import Shard
from precompute.corpus import Batch

__all__ = ["WHOLE", "Shard", "shard_batches"]


WHOLE = Shard(0, 1)


def shard_batches(
    batches: Iterable[Batch],
    shard: Shard,
    block_batches: int,
    on_block_end: Callable[[int], None],
    first_block: int = 0,
) -> Iterator[Batch]:
    """The batches of ``shard``'s blocks from ``first_block`` on. After the last batch of each of its
    blocks has been processed (the consumer asks for the next one), ``on_block_end(next_block)``
    runs: there the block's sums are flushed and a checkpoint may be written. It runs once more at
    the end of the corpus (a last, shorter block)."""
    last_block = -1
    for i, batch in enumerate(batches):
        block = i // block_batches
        if block < first_block or not shard.owns(block):
            continue
        last_block = block
        yield batch
        if (i + 1) % block_batches == 0:
            on_block_end(block + 1)
            last_block = -1
    if last_block >= 0:
        on_block_end(last_block + 1)
