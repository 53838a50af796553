"""A held-out store: the pipeline's pass, keeping only what scoring explanations reads.

``run_heldout`` is ``run_precompute`` (``prepare`` and ``stream``, the same accumulators) less what
a held-out store never shows: no heads, no scores, no neuron-feature links (their sums in the pass),
no logits or neighbours. It keeps the sequences, the vocabulary, the sources, each unit's statistics
and its examples (top, quantile-sampled, bottom), which ``neurodash.heldout`` reads as held-out text.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from neurodash.config import PrecomputeConfig
from neurodash.storage import StoreWriter, check_writable
from precompute.device import check_device
from precompute.pipeline import tables
from precompute.pipeline.run import _vocab, frozen_heap, prepare, write_meta
from precompute.pipeline.shard import WHOLE, shard_batches
from precompute.pipeline.stream import stream


def run_heldout(cfg: PrecomputeConfig, progress: bool = True) -> Path:
    """Stream ``cfg``'s windows through the model once and write the lean store to ``cfg.out``."""
    cfg = dataclasses.replace(cfg, heads=False, scores=False)
    out = Path(cfg.out)
    check_writable(out, cfg.overwrite)
    check_device(cfg.device)
    run = prepare(cfg)
    for t in run.tracked:
        t.bridge = None  # no links: their sums are not gathered
    with frozen_heap(), StoreWriter(out, overwrite=cfg.overwrite) as writer:
        batches = shard_batches(run.batches(), WHOLE, cfg.block_batches, on_block_end=lambda _: run.flush())
        n_tokens, seconds = stream(
            run.model, run.dataset, cfg, run.tracked, run.hooks, run.first, writer, progress, None, batches
        )
        writer.append("vocab", _vocab(run.model))
        for t in run.tracked:
            source = dataclasses.replace(t.source, n_tokens=n_tokens)
            result = t.acc.result()
            writer.add_source(source)
            writer.append("units", tables.units_table(source.source_id, result, cfg.examples.hist_bins))
            writer.append("examples", tables.examples_table(source.source_id, result, cfg.examples))
        write_meta(writer, cfg, run.sampling, n_tokens, seconds, held_out=True)
        return writer.commit()
