"""Scale through the real command line, on the tiny Llama (with its SAE and heads): shards and
``neurodash merge``, ``torchrun`` with 2 CPU ranks, and a run killed (SIGKILL, at a random point
after its first checkpoint) then ``--resume``d, each equal row for row to one plain process."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from store_compare import differing_rows

ROOT = Path(__file__).resolve().parents[2]
STORE = "store.duckdb"


def env() -> dict[str, str]:
    # One thread everywhere: torchrun gives each rank one, and the forward pass must do the same arithmetic.
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }


def run_args(model: Path, dataset: Path, sae: Path, *extra: str) -> list[str]:
    return [
        "precompute",
        "--model",
        str(model),
        "--dataset",
        str(dataset),
        "--sae",
        str(sae),
        "--layers",
        "0,1",
        "--tokens",
        "960",
        "--ctx",
        "32",
        "--batch-size",
        "3",
        "--block-batches",
        "1",
        "--top-k",
        "5",
        *extra,
    ]


def neurodash(folder: Path, *args: str, python: tuple[str, ...] = ("-m", "neurodash")) -> str:
    """Run in ``folder`` (so every store records the same relative --out); fail on a non-zero exit."""
    done = subprocess.run(
        [sys.executable, *python, *args], cwd=folder, env=env(), capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def single(tiny_model_dir, docs_jsonl, untrained_sae, tmp_path_factory) -> Path:
    """The plain one-process store, renamed aside."""
    folder = tmp_path_factory.mktemp("scale-cli")
    neurodash(folder, *run_args(tiny_model_dir, docs_jsonl, untrained_sae, "--out", STORE))
    return (folder / STORE).rename(folder / "single.duckdb")


def fresh(single: Path, name: str) -> Path:
    folder = single.parent / name
    folder.mkdir()
    return folder


def test_shards_then_merge(single, tiny_model_dir, docs_jsonl, untrained_sae):
    folder = fresh(single, "shards")
    for i in range(2):
        args = run_args(
            tiny_model_dir, docs_jsonl, untrained_sae, "--shard", f"{i}/2", "--out", f"s{i}.state"
        )
        assert f"wrote shard {i}/2" in neurodash(folder, *args)
    neurodash(folder, "merge", "s1.state", "s0.state", "--out", STORE)
    assert differing_rows(single, folder / STORE) == {}


def test_torchrun_two_cpu_ranks(single, tiny_model_dir, docs_jsonl, untrained_sae):
    folder = fresh(single, "torchrun")
    torchrun = ("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "neurodash")
    out = neurodash(
        folder, *run_args(tiny_model_dir, docs_jsonl, untrained_sae, "--out", STORE), python=torchrun
    )
    assert "(2 ranks)" in out
    assert differing_rows(single, folder / STORE) == {}


def test_sigkill_then_resume(single, tiny_model_dir, docs_jsonl, untrained_sae):
    folder = fresh(single, "killed")
    args = run_args(tiny_model_dir, docs_jsonl, untrained_sae, "--out", STORE, "--checkpoint-tokens", "96")
    checkpoint = folder / f"{STORE}.checkpoint"
    rng = random.Random(time.time_ns())
    # checkpoints seen (of 10, one per block), then a random moment; on a busy machine the run can
    # outpace the polling: then again, killed at the first checkpoint seen
    for kill_after, delay in [(rng.randint(1, 4), rng.uniform(0.0, 0.3)), (1, 0.0), (1, 0.0)]:
        if kill_run(folder, args, checkpoint, kill_after, delay) == -signal.SIGKILL:
            break
        (folder / STORE).unlink(missing_ok=True)
    else:
        pytest.fail("the run ended three times before it was killed")
    assert checkpoint.exists() and not (folder / STORE).exists()
    neurodash(folder, *args, "--resume")
    assert not checkpoint.exists()
    assert differing_rows(single, folder / STORE) == {}


def kill_run(folder: Path, args: list[str], checkpoint: Path, kill_after: int, delay: float) -> int | None:
    """Start the run, SIGKILL it ``delay`` s after its ``kill_after``-th checkpoint; its exit status."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "neurodash", *args],
        cwd=folder,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seen, deadline = set(), time.monotonic() + 600
    while len(seen) < kill_after and proc.poll() is None and time.monotonic() < deadline:
        if checkpoint.exists():
            seen.add(checkpoint.stat().st_ino)  # each checkpoint is a new file renamed into place
        time.sleep(0.01)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    return proc.wait()
