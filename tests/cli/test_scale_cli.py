"""Scale through the real command line, on the tiny Llama (with its SAE and heads): shards and
``neurodash merge``, ``torchrun`` with 2 CPU ranks, and a run killed (SIGKILL, at a random point
after its first checkpoint) then ``--resume``d, each equal row for row to one plain process."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import assert_failed
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
    neurodash(folder, "merge", "s1.state", "s0.state", "--out", STORE, "--device", "cpu")
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
        killed = kill_run(folder, args, checkpoint, kill_after, delay) == -signal.SIGKILL
        if killed and checkpoint.exists() and not (folder / STORE).exists():
            break
        (folder / STORE).unlink(missing_ok=True)  # it finished (or was killed once its store was in place)
        checkpoint.unlink(missing_ok=True)
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


TORCHRUN = ("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "neurodash")


@pytest.fixture(scope="module")
def killed_torchrun(single, tiny_model_dir, docs_jsonl, untrained_sae) -> tuple[Path, list[str]]:
    """A torchrun job of 2 CPU ranks, each checkpointing every block of its shard, SIGKILLed (the
    whole process group: torchrun and its ranks) at a random point after each rank's first
    checkpoint: its folder (each rank's checkpoint, no store) and its arguments."""
    folder = fresh(single, "torchrun-killed")
    args = run_args(tiny_model_dir, docs_jsonl, untrained_sae, "--out", STORE, "--checkpoint-tokens", "96")
    checkpoints = [folder / f"{STORE}.rank{i}-of-2.checkpoint" for i in range(2)]
    rng = random.Random(time.time_ns())
    for kill_after, delay in [(rng.randint(1, 3), rng.uniform(0.0, 0.3)), (1, 0.0), (1, 0.0)]:
        killed = kill_job(folder, [*TORCHRUN, *args], checkpoints, kill_after, delay) == -signal.SIGKILL
        if killed and all(c.exists() for c in checkpoints) and not (folder / STORE).exists():
            break
        (folder / STORE).unlink(missing_ok=True)  # it finished (or was killed once its store was in place)
        for c in checkpoints:
            c.unlink(missing_ok=True)
    else:
        pytest.fail("the torchrun job ended three times before it was killed")
    assert all(c.exists() for c in checkpoints) and not (folder / STORE).exists()
    return folder, args


def copied(folder: Path, to: Path) -> Path:
    to.mkdir()
    for c in folder.glob("*.checkpoint"):
        shutil.copy(c, to / c.name)
    return to


def test_torchrun_sigkill_then_resume(killed_torchrun, single):
    folder = copied(killed_torchrun[0], single.parent / "torchrun-resumed")
    out = neurodash(folder, *killed_torchrun[1], "--resume", python=TORCHRUN)
    assert "(2 ranks)" in out
    assert list(folder.glob("*.checkpoint*")) == []
    assert differing_rows(single, folder / STORE) == {}


MISMATCHED_RESUMES = {  # ranks, arguments added (the last value wins), what rank 0's one line says
    "three-ranks": (3, [], "are of a torchrun job of 2 ranks: resume it with 2 ranks"),
    "one-rank": (1, [], "are of a torchrun job of 2 ranks: resume it with 2 ranks"),
    "other-settings": (2, ["--top-k", "6"], "is the checkpoint of another run (other settings or shard)"),
    "no-torchrun": (0, [], "are of a torchrun job of 2 ranks: resume it with 2 ranks"),
}


@pytest.mark.parametrize("case", list(MISMATCHED_RESUMES))
def test_torchrun_mismatched_resume(killed_torchrun, single, case):
    """Each rank started as torchrun starts it (its environment; 0: a plain process): rank 0 says why
    in one line, every rank exits with status 2, nothing is written and the checkpoints are kept."""
    ranks, changes, message = MISMATCHED_RESUMES[case]
    folder = copied(killed_torchrun[0], single.parent / f"mismatched-{case}")
    before = {c.name: c.read_bytes() for c in folder.glob("*.checkpoint")}
    args = [*killed_torchrun[1], *changes]
    if ranks == 0:
        results = [neurodash_status(folder, [*args, "--resume"], {})]
    else:
        results = ranks_of_a_job(folder, [*args, "--resume"], ranks)
    (code, err), *others = results
    assert_failed(code, err, message, folder / STORE)
    assert "Traceback" not in err and len([line for line in err.splitlines() if line.strip()]) == 1, err
    for other_code, other_err in others:
        assert other_code == 2 and "error" not in other_err and "Traceback" not in other_err, other_err
    assert {c.name: c.read_bytes() for c in folder.glob("*.checkpoint")} == before
    assert sorted(p.name for p in folder.iterdir()) == sorted(before)


def test_torchrun_mismatched_resume_under_torchrun(killed_torchrun, single):
    """The same through torchrun itself: its own report of the ranks' status, the one line once."""
    folder = copied(killed_torchrun[0], single.parent / "mismatched-torchrun")
    torchrun3 = tuple("3" if a == "2" else a for a in TORCHRUN)
    done = subprocess.run(
        [sys.executable, *torchrun3, *killed_torchrun[1], "--resume"],
        cwd=folder,
        env=env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    said = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode != 0 and len(said) == 1 and "torchrun job of 2 ranks" in said[0], done.stderr
    assert "exitcode  : 2" in done.stderr and not (folder / STORE).exists()


def neurodash_status(folder: Path, args: list[str], extra: dict[str, str]) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "neurodash", *args],
        cwd=folder,
        env={**env(), **extra},
        capture_output=True,
        text=True,
        timeout=900,
    )
    return done.returncode, done.stderr


def ranks_of_a_job(folder: Path, args: list[str], ranks: int) -> list[tuple[int, str]]:
    """Start ``ranks`` processes with the environment torchrun gives its ranks; each one's status and
    stderr, in rank order."""
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "neurodash", *args],
            cwd=folder,
            env={
                **env(),
                "RANK": str(i),
                "LOCAL_RANK": str(i),
                "WORLD_SIZE": str(ranks),
                "LOCAL_WORLD_SIZE": str(ranks),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(ranks)
    ]
    return [(p.wait(timeout=900), p.stderr.read() if p.stderr else "") for p in procs]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_job(folder: Path, command: list[str], checkpoints: list[Path], kill_after: int, delay: float) -> int:
    """Start ``python command`` (torchrun) in its own process group; ``delay`` s after every file of
    ``checkpoints`` has been written ``kill_after`` times, SIGKILL it and every rank (each rank's
    group); torchrun's exit status."""
    proc = subprocess.Popen(
        [sys.executable, *command],
        cwd=folder,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    seen: dict[Path, set[int]] = {c: set() for c in checkpoints}
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        for c in checkpoints:
            try:
                seen[c].add(c.stat().st_ino)  # each checkpoint is a new file renamed into place
            except FileNotFoundError:
                pass
        if all(len(s) >= kill_after for s in seen.values()):
            break
        time.sleep(0.01)
    time.sleep(delay)
    ranks = descendants(proc.pid)  # torchrun starts each rank in a session of its own
    for group in [proc.pid, *ranks]:  # torchrun first, so that it restarts nothing
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:  # ended already
            pass
    return proc.wait()


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (from /proc), parents before children."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found
