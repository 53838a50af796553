"""At scale, on paper from what is measured here: the time, memory per rank and store size of a large run.

    python benchmarks/scale.py [--tokens 4096] [--target-tokens 1e8] [--ranks 1,8,64] [--store S]
    python benchmarks/scale.py --torchrun 2 --tokens 65536 --checkpoint-tokens 16384

Measures, on this machine, one precompute run of the default model (every layer's neurons and heads,
and the demo's SAE once ``neurodash demo`` has trained it), or reads an existing store (``--store``,
read only; its ``phase_seconds`` and size), or runs the real thing: ``--torchrun K`` starts
``torchrun --nproc-per-node K -m neurodash precompute`` (CPU ranks, one thread each; with
``--checkpoint-tokens`` each rank checkpoints its shard, and the largest checkpoint is measured) and
reports its wall time, each rank's peak memory (VmHWM) and the store: the pass's throughput (tokens per second: tokenize,
forward, update), the fixed cost (loading, the tables and the probes: independent of the tokens read),
and the store's bytes, measured per table with DuckDB's storage info: per token (the sequences) and
per unit (everything else). From them it prints, for a run of ``--target-tokens`` split over R ranks
(each as fast as this machine, reading 1/R of the windows; ``--shard``/torchrun):

- time: tokens / (R x throughput), plus the fixed cost, plus the merge of R states on rank 0
  (their bytes at ``--merge-gbps``, an assumption, not a measurement);
- memory per rank: the model's weights, one batch's cached activations, and every unit's state
  (``state_bytes``); rank 0 also holds a second state while merging;
- store size: units x bytes per unit + tokens x bytes per token.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GB = 1e9
PASS_PHASES = ("tokenize", "forward", "accumulate", "write")  # what grows with the tokens read


@dataclass(frozen=True)
class Measured:
    tokens: int
    pass_seconds: float
    fixed_seconds: float  # load, tables, probes: once per run
    units: int
    bytes_per_unit: float
    bytes_per_token: float

    @property
    def throughput(self) -> float:
        return self.tokens / self.pass_seconds


def measure(args) -> tuple[Path, float]:
    """One precompute run here: its store (in a temporary folder) and its wall time."""
    from precompute import PrecomputeConfig, parse_layers, run_precompute

    out = Path(tempfile.mkdtemp()) / "scale.duckdb"
    cfg = PrecomputeConfig(
        out=out,
        model=args.model,
        layers=parse_layers(args.layers) if args.layers else None,
        tokens=args.tokens,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        saes=tuple(args.sae),
    )
    started = time.perf_counter()
    run_precompute(cfg, progress=False)
    return out, time.perf_counter() - started


@dataclass(frozen=True)
class TorchrunRun:
    store: Path
    wall: float
    peak_rank_bytes: dict[int, int]  # each rank's peak resident memory (VmHWM), by rank
    checkpoint_bytes: int  # the largest checkpoint any rank wrote (0: none)


def measure_torchrun(args) -> TorchrunRun:
    """A real ``torchrun`` job of ``args.torchrun`` CPU ranks, timed, its memory and checkpoints measured."""
    import os
    import subprocess
    import threading

    folder = Path(tempfile.mkdtemp())
    out = folder / "scale.duckdb"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(args.torchrun),
    ]
    cmd += ["-m", "neurodash", "precompute", "--model", args.model, "--tokens", str(args.tokens)]
    cmd += ["--batch-size", str(args.batch_size), "--device", args.device, "--dtype", args.dtype]
    cmd += ["--out", str(out), *(["--layers", args.layers] if args.layers else [])]
    cmd += [a for sae in args.sae for a in ("--sae", sae)]
    if args.checkpoint_tokens:
        cmd += ["--checkpoint-tokens", str(args.checkpoint_tokens)]
    biggest, peaks = {"bytes": 0}, {}
    done = threading.Event()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    job = subprocess.Popen(cmd, env=env, cwd=folder)

    def watch() -> None:  # checkpoints are removed at the end, ranks end: see each while it is there
        while not done.wait(0.5):
            for f in folder.glob("*.checkpoint*"):
                try:
                    biggest["bytes"] = max(biggest["bytes"], f.stat().st_size)
                except FileNotFoundError:
                    pass
            for rank, peak in _rank_peaks(job.pid).items():
                peaks[rank] = max(peaks.get(rank, 0), peak)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    if job.wait() != 0:
        raise SystemExit(f"the torchrun job failed (status {job.returncode})")
    wall = time.perf_counter() - started
    done.set()
    watcher.join()
    return TorchrunRun(out, wall, peaks, biggest["bytes"])


def _rank_peaks(pid: int) -> dict[int, int]:
    """The peak resident memory (VmHWM) of each process below ``pid`` that has a ``RANK``, by rank."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    below, frontier = [], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        below += frontier
    peaks = {}
    for child in below:
        try:
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            status = Path(f"/proc/{child}/status").read_text()
        except OSError:
            continue
        rank = next((int(e[5:]) for e in environ if e.startswith(b"RANK=")), None)
        hwm = next(
            (int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM")), 0
        )
        if rank is not None:
            peaks[rank] = max(peaks.get(rank, 0), hwm)
    return peaks


def read_store(path: Path, wall: float | None) -> Measured:
    """The throughput, fixed cost and bytes of a store, from its metadata and DuckDB's storage info."""
    import duckdb

    with duckdb.connect(str(path), read_only=True) as con:
        meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
        phases = json.loads(meta["phase_seconds"])
        block = con.execute("SELECT block_size FROM pragma_database_size()").fetchone()
        block_size = int(block[0]) if block else 262_144
        tables = [name for (name,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
        blocks = {
            t: con.execute(f"SELECT count(DISTINCT block_id) FROM pragma_storage_info('{t}')").fetchone()[0]
            for t in tables
        }
        units = con.execute("SELECT sum(n_units) FROM sources").fetchone()[0]
    n_tokens = int(meta["n_tokens"])
    per_table = {t: n * block_size for t, n in blocks.items()}
    per_unit = sum(b for t, b in per_table.items() if t not in ("sequences", "vocab")) / units
    pass_seconds = sum(phases.get(p, 0.0) for p in PASS_PHASES)
    fixed = wall - pass_seconds if wall is not None else phases.get("tables", 0.0)  # 0: not recorded
    return Measured(n_tokens, pass_seconds, fixed, int(units), per_unit, per_table["sequences"] / n_tokens)


def memory_per_rank(m: Measured, args) -> tuple[float, float]:
    """Bytes on each rank during the pass, and on rank 0 while it merges (a second state)."""
    from neurodash.config import AccumulatorConfig, PrecomputeConfig
    from precompute.models import embedded_model_folder
    from precompute.pipeline.accumulate import state_bytes

    cfg = PrecomputeConfig(out="unused")
    state = state_bytes(m.units, args.ctx, AccumulatorConfig(), cfg.context_dims)
    weights = sum(f.stat().st_size for f in embedded_model_folder().glob("*.safetensors"))
    # one batch's cached hooks, float32: per layer d_mlp + d_model (context) + n_heads x (d_head + ctx)
    per_token = 30 * (1536 + 576 + 9 * (64 + args.ctx)) + 4096 * 2
    activations = args.batch_size * args.ctx * per_token * 4 * 2  # the cache and the update's copies
    during = weights + activations + state
    return during, during + state


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--layers", default=None, help="default: every layer")
    p.add_argument("--tokens", type=int, default=4096, help="tokens of the run measured here")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--ctx", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--sae", action="append", default=[], help="default: the demo's SAE, if trained")
    p.add_argument("--store", type=Path, help="read this store's figures instead of measuring a run")
    p.add_argument("--torchrun", type=int, help="measure a real torchrun job of this many CPU ranks")
    p.add_argument("--checkpoint-tokens", type=int, help="with --torchrun: each rank checkpoints this often")
    p.add_argument("--target-tokens", type=float, default=1e8)
    p.add_argument("--ranks", default="1,8,64")
    p.add_argument("--merge-gbps", type=float, default=1.0, help="assumed rate of merging states, GB/s")
    args = p.parse_args()
    if args.store is None and not args.sae:
        from neurodash import paths
        from neurodash.cli import DEMO_SAE_LAYER

        demo_sae = paths.home() / f"sae-L{DEMO_SAE_LAYER}"
        args.sae = [str(demo_sae)] if demo_sae.is_dir() else []
    if args.store is not None:
        m = read_store(args.store, None)
        source = f"store {args.store}"
    elif args.torchrun:
        job = measure_torchrun(args)
        m = read_store(job.store, None)
        m = replace(m, fixed_seconds=max(0.0, job.wall - m.pass_seconds / args.torchrun))  # ranks in parallel
        source = (
            f"a torchrun job of {args.torchrun} ranks ({args.device}, one thread each) reading "
            f"{args.tokens:,} tokens (sae {args.sae or 'none'}); the pass's seconds summed over the ranks"
        )
        peaks = ", ".join(f"rank {r} {b / GB:.2f} GB" for r, b in sorted(job.peak_rank_bytes.items()))
        print(
            f"torchrun job: {job.wall:.0f} s wall ({m.tokens / job.wall:,.0f} tok/s for the whole job), "
            f"peak memory {peaks}, largest checkpoint {job.checkpoint_bytes / GB:.3f} GB, "
            f"store {job.store.stat().st_size / GB:.3f} GB"
        )
    else:
        store, wall = measure(args)
        m = read_store(store, wall)
        source = (
            f"a run of {args.tokens:,} tokens here ({args.device}, {args.dtype}, sae {args.sae or 'none'})"
        )
    print(f"measured from {source}:")
    print(
        f"  pass {m.throughput:,.0f} tok/s, fixed cost {m.fixed_seconds:.0f} s, {m.units:,} units, "
        f"{m.bytes_per_unit / 1e3:.1f} kB per unit, {m.bytes_per_token:.2f} B per token"
    )
    target = int(args.target_tokens)
    during, merging = memory_per_rank(m, args)
    store_bytes = m.units * m.bytes_per_unit + target * m.bytes_per_token
    print(f"a run of {target:,} tokens, {m.units:,} units (each rank as fast as this machine):")
    print(
        f"  {'ranks':>6} {'pass':>10} {'merge':>8} {'total':>10} {'memory/rank':>12} {'rank 0':>8} {'store':>9}"
    )
    for ranks in (int(r) for r in args.ranks.split(",")):
        pass_s = target / (ranks * m.throughput)
        merge_s = (ranks - 1) * (merging - during) / (args.merge_gbps * GB)
        total = pass_s + merge_s + m.fixed_seconds
        print(
            f"  {ranks:>6} {_hours(pass_s):>10} {merge_s:>7.0f}s {_hours(total):>10} "
            f"{during / GB:>10.1f}GB {merging / GB:>6.1f}GB {store_bytes / GB:>7.2f}GB"
        )


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


if __name__ == "__main__":
    main()
