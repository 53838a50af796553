"""Bad input of issue 18 (shards, merge, resume), through the real command line: one ``error:``
line, exit status 2, nothing written. One parametrised row per case: shards that do not belong
together (another model, corpus, settings or shard count), a missing shard, a state of another
format version, a file that is no state, an unfinished shard, ``--resume`` with nothing to resume,
a malformed ``--shard``, ``--shard`` under torchrun, and a merge on a device that is not there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import assert_failed

from neurodash.config import PrecomputeConfig, Shard
from precompute.scale import precompute_shard

ROOT = Path(__file__).resolve().parents[2]


def neurodash(folder: Path, *args: str | Path, extra_env: dict[str, str] | None = None) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "neurodash", *map(str, args)],
        cwd=folder,
        env={**env, **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stderr


def one_line(code: int, err: str, fragment: str, *paths: Path) -> None:
    assert_failed(code, err, fragment, *paths)
    said = [line for line in err.splitlines() if line.strip() and "|" not in line and "Loading" not in line]
    assert len(said) == 1, err


def tiny_config(model: Path, dataset: Path, **changes) -> PrecomputeConfig:
    settings = dict(model=str(model), dataset=str(dataset), layers=(0,), tokens=256, ctx=32, batch_size=2)
    return PrecomputeConfig(out="unused", block_batches=1, **{**settings, **changes})


@pytest.fixture(scope="module")
def states(tiny_model_dir, docs_jsonl, tmp_path_factory) -> dict[str, Path]:
    """Shards 0/2 and 1/2 of one run, and shards 1/2 of runs that differ in one way each."""
    folder = tmp_path_factory.mktemp("states")
    other_model = shutil.copytree(tiny_model_dir, folder / "other-model")
    other_corpus = shutil.copy(docs_jsonl, folder / "other-docs.jsonl")
    runs = {
        "a0": (tiny_config(tiny_model_dir, docs_jsonl), Shard(0, 2)),
        "a1": (tiny_config(tiny_model_dir, docs_jsonl), Shard(1, 2)),
        "model": (tiny_config(Path(other_model), docs_jsonl), Shard(1, 2)),
        "corpus": (tiny_config(tiny_model_dir, Path(other_corpus)), Shard(1, 2)),
        "settings": (tiny_config(tiny_model_dir, docs_jsonl, n_logits=3), Shard(1, 2)),
        "count": (tiny_config(tiny_model_dir, docs_jsonl), Shard(1, 3)),
    }
    out = {
        name: precompute_shard(cfg, shard, folder / f"{name}.state", progress=False)
        for name, (cfg, shard) in runs.items()
    }
    out["version"] = _other_version(out["a1"], folder / "version.state")
    out["garbage"] = folder / "garbage.state"
    out["garbage"].write_bytes(b"not a state at all" * 10)
    out["checkpoint"] = _unfinished(out["a1"], folder / "checkpoint.state")
    return out


def _rewritten(path: Path, to: Path, **header_changes) -> Path:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as f:
        header = json.loads((f.metadata() or {})["header"])
    save_file(load_file(str(path)), str(to), {"header": json.dumps({**header, **header_changes})})
    return to


def _other_version(path: Path, to: Path) -> Path:
    return _rewritten(path, to, version=99)


def _unfinished(path: Path, to: Path) -> Path:
    return _rewritten(path, to, complete=False)


MERGES = {  # the states given to merge (besides a0), what the error line says
    "another-model": (["model"], "not shards of one run: model"),
    "another-corpus": (["corpus"], "not shards of one run: corpus"),
    "other-settings": (["settings"], "not shards of one run: their settings differ (n_logits)"),
    "another-shard-count": (["count"], "not shards of one run: shard count"),
    "a-missing-shard": ([], "shard 1/2 is missing"),
    "the-same-shard-twice": (["a0"], "are both shard 0/2"),
    "another-version": (["version"], "a pass state of format version 99; this neurodash reads versions 1-2"),
    "not-a-state": (["garbage"], "not a neurodash pass state"),
    "an-unfinished-shard": (["checkpoint"], "an unfinished shard (a checkpoint)"),
    "no-such-file": (["nowhere"], "no such pass state"),
}


@pytest.mark.parametrize("case", list(MERGES))
def test_bad_merge(states, tmp_path, case):
    names, message = MERGES[case]
    given = [states["a0"], *(states.get(n, tmp_path / f"{n}.state") for n in names)]
    out = tmp_path / "store.duckdb"
    code, err = neurodash(tmp_path, "merge", *given, "--out", out)
    one_line(code, err, message, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("device", "message"),
    [("cuda:99", "--device cuda:99: "), ("gpu", "--device gpu: not a device")],
)
def test_bad_merge_device(states, tmp_path, device, message):
    out = tmp_path / "store.duckdb"
    code, err = neurodash(tmp_path, "merge", states["a0"], states["a1"], "--out", out, "--device", device)
    one_line(code, err, message, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def precompute(model: Path, dataset: Path, *extra: str | Path) -> list[str | Path]:
    return [
        "precompute",
        "--model",
        model,
        "--dataset",
        dataset,
        "--layers",
        "0",
        "--tokens",
        "256",
        "--ctx",
        "32",
        *extra,
    ]


PRECOMPUTES = {  # extra arguments, torchrun's environment or none, what the error line says
    "resume-with-nothing-to-resume": (["--resume"], None, "--resume: nothing to resume"),
    "resume-a-shard-with-nothing-to-resume": (
        ["--shard", "0/2", "--resume"],
        None,
        "--resume: nothing to resume",
    ),
    "shard-index-past-count": (["--shard", "2/2"], None, "--shard 2/2: not I/N"),
    "shard-not-a-fraction": (["--shard", "half"], None, "--shard half: not I/N"),
    "shard-under-torchrun": (
        ["--shard", "0/2"],
        {"RANK": "0", "WORLD_SIZE": "2"},
        "under torchrun each rank is a shard: leave out --shard",
    ),
}


@pytest.mark.parametrize("case", list(PRECOMPUTES))
def test_bad_precompute(tiny_model_dir, docs_jsonl, tmp_path, case):
    extra, torchrun_env, message = PRECOMPUTES[case]
    out = tmp_path / "out.duckdb"
    code, err = neurodash(
        tmp_path, *precompute(tiny_model_dir, docs_jsonl, "--out", out, *extra), extra_env=torchrun_env
    )
    one_line(code, err, message, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
