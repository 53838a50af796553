"""What the held-out pass of ``neurodash explain`` costs: wall and CPU seconds of building the
held-out store of a layer (``neurodash.heldout``), side by side with the full pipeline over the same
windows (``run_precompute``, the same settings: its logits, neighbours and links too).

    python benchmarks/heldout_cost.py STORE [--layers 15] [--tokens 8192] [--full]

Writes beside a copy-free link of the store: pass a path of your own (a symlink to a shared store).
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def timed(name: str, fn) -> None:
    wall, cpu = time.perf_counter(), cpu_seconds()
    fn()
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    load = os.getloadavg()[0]
    print(f"{name}: {wall:.1f} s wall, {cpu:.1f} s CPU (load average {load:.1f})", flush=True)


def main() -> None:
    from neurodash.heldout import fresh_heldout, heldout_config, heldout_path
    from neurodash.storage import Store

    p = argparse.ArgumentParser()
    p.add_argument("store", type=Path)
    p.add_argument("--layers", default="15")
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--full", action="store_true", help="also the full pipeline over the same windows")
    args = p.parse_args()
    layers = tuple(int(x) for x in args.layers.split(","))
    out = heldout_path(args.store)
    out.unlink(missing_ok=True)
    timed("held-out pass", lambda: fresh_heldout(args.store, layers, args.tokens, progress=False))
    if args.full:
        from precompute import run_precompute

        with Store(args.store) as store:
            cfg = heldout_config(store, layers, args.tokens, out.with_name(out.stem + ".full.duckdb"))
        timed("full pipeline, same windows", lambda: run_precompute(cfg, progress=False))
        Path(cfg.out).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
