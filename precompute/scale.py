"""Precompute past one process: shards, their merge, checkpoints and resuming.

- ``precompute_shard``: ``neurodash precompute --shard I/N --out STATE``: one shard's blocks of
  windows (``pipeline.shard``), its whole state written to a file (``pipeline.state``);
- ``merge_states``: ``neurodash merge STATE... --out store.duckdb``: the shards of one run, checked
  to belong together, merged exactly and written as the store one process would have written;
- ``precompute_resumable``: a one-process run that checkpoints its state every N tokens beside its
  output (``OUT.checkpoint``, written atomically) and, with ``resume``, continues from it.

``precompute.distributed`` runs the shards as ranks of one ``torchrun`` job on the same functions;
there each rank checkpoints its own shard (``checkpoint_path(out, rank)``) and resumes from it.
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from neurodash.config import PrecomputeConfig
from neurodash.errors import NeurodashError
from neurodash.storage import StoreWriter, check_writable
from precompute.device import check_device
from precompute.pipeline import state
from precompute.pipeline.run import PreparedPass, frozen_heap, prepare, write_store
from precompute.pipeline.shard import WHOLE, Shard, shard_batches
from precompute.pipeline.state import Sequences, StateHeader
from precompute.pipeline.stream import stream


def checkpoint_path(out: Path, rank: Shard | None = None) -> Path:
    """Where a run writing ``out`` keeps its checkpoint, beside ``out`` and its ``.partial``:
    ``OUT.checkpoint``, or rank I of a torchrun job of N ranks ``OUT.rankI-of-N.checkpoint``."""
    tag = "" if rank is None else f".rank{rank.index}-of-{rank.count}"
    return out.with_name(f"{out.name}{tag}.checkpoint")


def _rank_counts(out: Path) -> set[int]:
    """The rank counts of the torchrun jobs whose checkpoints lie beside ``out``."""
    found = (re.fullmatch(r"\.rank\d+-of-(\d+)\.checkpoint", p.name[len(out.name) :]) for p in _beside(out))
    return {int(m.group(1)) for m in found if m}


def _beside(out: Path) -> list[Path]:
    return list(out.parent.glob(glob.escape(out.name) + ".rank*.checkpoint"))


def check_resume(cfg: PrecomputeConfig, shard: Shard, out: Path, rank: Shard | None = None) -> Path:
    """The checkpoint a ``--resume`` of shard ``shard`` (``rank``: of a torchrun job) continues
    from; refused in one line where there is none, or one of another run, shard or rank count."""
    checkpoint = checkpoint_path(out, rank)
    if not checkpoint.is_file():
        raise NeurodashError(_no_checkpoint(checkpoint, out, rank))
    header = state.read_header(checkpoint)
    if header.complete:
        raise NeurodashError(f"--resume: {checkpoint} is a finished shard, not a checkpoint")
    if header.config != state.run_config(cfg) or header.shard != shard:
        raise NeurodashError(
            f"--resume: {checkpoint} is the checkpoint of another run (other settings or shard): "
            "resume with the settings it was started with"
        )
    return checkpoint


def _no_checkpoint(checkpoint: Path, out: Path, rank: Shard | None) -> str:
    counts = sorted(_rank_counts(out) - ({rank.count} if rank else set()))
    if counts:
        return (
            f"--resume: the checkpoints beside {out} are of a torchrun job of {counts[0]} ranks: resume "
            f"it with {counts[0]} ranks in all (torchrun --nproc-per-node)"
        )
    if rank is not None and checkpoint_path(out).is_file():
        return (
            f"--resume: {checkpoint_path(out)} is a one-process run's checkpoint: resume it without torchrun"
        )
    return (
        f"--resume: nothing to resume: no checkpoint {checkpoint} (a run with --checkpoint-tokens "
        "leaves one until it finishes)"
    )


@dataclass
class ShardRun:
    """A pass over one shard, finished: its prepared sources (state inside), windows and header."""

    run: PreparedPass
    sequences: Sequences
    header: StateHeader

    def tensors(self) -> dict:
        return state.capture(self.run.tracked, self.run.contexts, self.sequences)


def run_shard(
    cfg: PrecomputeConfig,
    shard: Shard,
    checkpoint: Path | None = None,
    every_tokens: int | None = None,
    resume: bool = False,
    progress: bool = True,
) -> ShardRun:
    """Run ``shard``'s blocks, checkpointing to ``checkpoint`` every ``every_tokens`` tokens (at the
    next block's end), or continuing from it (``resume``: ``check_resume`` has found it)."""
    saved = state.load(checkpoint) if resume and checkpoint is not None else None
    check_device(cfg.device)
    run = prepare(cfg)
    sequences = Sequences()
    header = StateHeader(state.run_config(cfg), shard, sampling=run.sampling)
    if saved is not None:
        header, tensors = saved
        state.restore(tensors, run.tracked, run.contexts, sequences, checkpoint or Path(), merge=False)
        del tensors
    read = {"tokens": header.n_tokens, "since_checkpoint": 0, "next_block": header.next_block}

    def on_block_end(next_block: int) -> None:
        run.flush()
        read["next_block"] = next_block
        if checkpoint is not None and every_tokens and read["since_checkpoint"] >= every_tokens:
            h = replace(header, next_block=next_block, n_tokens=read["tokens"])
            state.save(checkpoint, h, state.capture(run.tracked, run.contexts, sequences))
            read["since_checkpoint"] = 0

    def counted(batches):
        for batch in batches:
            read["tokens"] += batch.tokens.numel()
            read["since_checkpoint"] += batch.tokens.numel()
            yield batch

    batches = counted(
        shard_batches(run.batches(), shard, cfg.block_batches, on_block_end, first_block=header.next_block)
    )
    with frozen_heap():
        _, seconds = stream(
            run.model,
            None,
            cfg,
            run.tracked,
            run.hooks,
            run.first,
            sequences,
            progress,
            run.contexts,
            batches,
        )
    run.flush()
    phases = {
        k: header.phase_seconds.get(k, 0.0) + seconds.get(k, 0.0) for k in {*seconds, *header.phase_seconds}
    }
    done = replace(
        header, next_block=read["next_block"], n_tokens=read["tokens"], complete=True, phase_seconds=phases
    )
    return ShardRun(run, sequences, done)


def precompute_shard(
    cfg: PrecomputeConfig,
    shard: Shard,
    out: Path,
    every_tokens: int | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """One shard's state, written to ``out`` (its checkpoint beside it, removed when it is done)."""
    check_writable(out, cfg.overwrite)
    checkpoint = check_resume(cfg, shard, out) if resume else checkpoint_path(out)
    done = run_shard(cfg, shard, checkpoint, every_tokens, resume, progress)
    state.save(out, done.header, done.tensors())
    checkpoint.unlink(missing_ok=True)
    return out


def precompute_resumable(
    cfg: PrecomputeConfig, every_tokens: int | None, resume: bool, progress: bool = True
) -> Path:
    """A one-process run to the store ``cfg.out`` that checkpoints (and resumes) beside it."""
    out = Path(cfg.out)
    check_writable(out, cfg.overwrite)
    checkpoint = check_resume(cfg, WHOLE, out) if resume else checkpoint_path(out)
    done = run_shard(cfg, WHOLE, checkpoint, every_tokens, resume, progress)
    path = write_merged(done.run, cfg, [done.header], done.sequences, progress)
    checkpoint.unlink(missing_ok=True)
    return path


def merge_states(
    paths: list[Path], out: Path, overwrite: bool = False, progress: bool = True, device: str | None = None
) -> Path:
    """The store of the run whose shards ``paths`` are (each read once, one at a time), merged and
    written on ``device`` (the states' sums, the logit effects, neighbours and head probes), by
    default the one the shards ran on."""
    check_writable(out, overwrite)
    headers = [(p, state.read_header(p)) for p in paths]
    state.check_together(headers)
    cfg = state.config_of(headers[0][1], out, overwrite)
    if device is not None:
        cfg = replace(cfg, device=device)
    check_device(cfg.device)
    run = prepare(cfg, corpus=False)
    run.sampling = headers[0][1].sampling
    sequences = Sequences()
    for path, _ in headers:
        _, tensors = state.load(path)
        state.restore(tensors, run.tracked, run.contexts, sequences, path, merge=True)
        del tensors
    return write_merged(run, cfg, [h for _, h in headers], sequences, progress)


def write_merged(
    run: PreparedPass, cfg: PrecomputeConfig, headers: list[StateHeader], sequences: Sequences, progress: bool
) -> Path:
    """Write the store from a merged (or resumed) pass: its windows in order, then every table."""
    n_tokens = sum(h.n_tokens for h in headers)
    phases: dict[str, float] = {}
    for h in headers:
        for k, v in h.phase_seconds.items():
            phases[k] = phases.get(k, 0.0) + v
    columns = sequences.columns()
    order = np.argsort(columns["seq_id"], kind="stable")
    with frozen_heap(), StoreWriter(Path(cfg.out), overwrite=cfg.overwrite) as writer:
        writer.append("sequences", {k: v[order] for k, v in columns.items()})
        write_store(writer, run, cfg, n_tokens, phases, progress)
        return writer.commit()
