"""Two text-probe jobs in a row, as the dashboard runs them, with and without the model worker.

Dash's DiskcacheManager forks a new process per job from the server (which never imports torch). Without
the worker each job imports torch and loads the model itself; with it (``neurodash.app.model_worker``)
each job asks the worker, which loaded the model once, to run the probe in a child. Prints each job's
wall time, from the fork to its result.

    python benchmarks/model_worker.py [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import multiprocessing
import time

from neurodash.app import model_worker
from neurodash.config import DEFAULT_MODEL

TEXT = "The quick brown fox jumps over the lazy dog. " * 4
HOOKS = ["blocks.15.mlp.hook_post"]


def _job(model: str, out) -> None:
    started = time.perf_counter()
    tokens, _ = model_worker.call("precompute.live.probe:probe_text", model, TEXT, HOOKS)
    out.put((time.perf_counter() - started, len(tokens)))


def _run_jobs(model: str, n: int) -> list[float]:
    fork = multiprocessing.get_context("fork")
    seconds = []
    for _ in range(n):
        out = fork.Queue()
        job = fork.Process(target=_job, args=(model, out))
        started = time.perf_counter()
        job.start()
        out.get()
        job.join()
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()

    model_worker.current = None  # as before: each job loads the model
    before = _run_jobs(args.model, args.jobs)

    worker = model_worker.ModelWorker(args.model)
    started = time.perf_counter()
    worker.ensure_started()  # what JobsManager does at the first job
    model_worker.current = worker
    try:
        after = _run_jobs(args.model, args.jobs)
    finally:
        worker.stop()
    print(f"model {args.model}, {args.jobs} probe jobs in a row (wall time per job, fork to result)")
    print("  a process per job, model loaded in each: " + ", ".join(f"{s:.2f} s" for s in before))
    print("  the model worker:                       " + ", ".join(f"{s:.2f} s" for s in after))
    print(f"  (the worker's first job includes its start: {time.perf_counter() - started:.1f} s in all)")


if __name__ == "__main__":
    main()
