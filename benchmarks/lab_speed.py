"""Circuit lab speed: the course's four prompts on the default model, every head (and MLP layer)
zero-ablated one at a time, and residual-stream patching over every layer x position.

    python benchmarks/lab_speed.py [--threads N] [--corruption one-token|random]

Prints the seconds and the number of (batched) forward passes of each part, beside the number of
single-prompt passes the same work would take unbatched, and the seconds of one bare forward pass
of each prompt for scale. Target: under 60 s in all on the 2-core CPU (model loading not counted).
The load average is printed too: other processes on the machine slow every figure down, and on a
loaded machine one thread is much faster than two (OpenMP threads wait for each other).
With the default corruption (the last token changed) the positions before it agree in both runs and
need no patching run; ``--corruption random`` changes every token, so every position is run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

import torch  # noqa: E402

from neurodash.lab import ZERO  # noqa: E402
from precompute.live.lab import ONE_TOKEN, RANDOM, Lab  # noqa: E402
from precompute.models import load_model  # noqa: E402

PROMPTS = ("A B A B A", "X Y X Y X", "1 2 1 2 1", "cat dog cat dog cat")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--corruption", choices=(ONE_TOKEN, RANDOM), default=ONE_TOKEN)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    lab = Lab(load_model())
    print(f"model loaded in {time.perf_counter() - started:.1f} s; {args.threads} threads; {args.corruption}")
    started = time.perf_counter()
    prompts = [lab.prompt(p, corruption=args.corruption) for p in PROMPTS]
    for p in prompts:
        lab.cache(p.corrupted_ids)
    lengths = [len(p.token_ids) for p in prompts]
    total = _timed("clean and corrupted runs", lab, started, 0)
    bare = time.perf_counter()
    for p in prompts:
        lab.model.forward(torch.tensor([p.token_ids]))
    print(f"  (one bare forward pass of each prompt: {time.perf_counter() - bare:.2f} s in all)")

    started, passes = time.perf_counter(), lab.forward_passes
    lab.ablate(prompts, ZERO)
    unbatched = len(prompts) * lab.n_layers * (lab.n_heads + 1)
    total += _timed("every head and MLP layer zero-ablated", lab, started, passes, unbatched)

    started, passes = time.perf_counter(), lab.forward_passes
    lab.patch(prompts, resid=True, components=False)
    total += _timed(
        "residual patching, every layer x position", lab, started, passes, lab.n_layers * sum(lengths)
    )
    print(
        f"total {total:.1f} s (target < 60 s); prompt lengths {lengths}; load average {os.getloadavg()[0]:.1f}"
    )


def _timed(what: str, lab: Lab, started: float, passes: int, unbatched: int | None = None) -> float:
    seconds = time.perf_counter() - started
    plain = f" (unbatched: {unbatched} passes from the first layer)" if unbatched else ""
    print(f"{what}: {seconds:.1f} s, {lab.forward_passes - passes} forward passes{plain}")
    return seconds


if __name__ == "__main__":
    main()
