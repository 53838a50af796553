"""``neurodash train-sae``: a run that prints its metrics, bad input as one clear line and exit
status 2 with nothing written, and Ctrl-C or kill during SAELens's training loop."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import assert_failed
from tiny_llama import SAE_HOOK as HOOK

from neurodash.cli import main
from precompute.sae import load_sae

ROOT = Path(__file__).resolve().parents[2]


def train_sae_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["train-sae", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_trains_and_prints_metrics(capsys, tiny_model_dir, docs_jsonl, tmp_path):
    out = tmp_path / "cli-sae"
    code, stdout, err = train_sae_cli(
        capsys,
        "--model",
        str(tiny_model_dir),
        "--dataset",
        str(docs_jsonl),
        "--hook",
        HOOK,
        "--d-sae",
        "64",
        "--k",
        "4",
        "--tokens",
        "1024",
        "--ctx",
        "32",
        "--batch-tokens",
        "128",
        "--out",
        str(out),
    )
    assert code == 0, err
    assert f"wrote {out}" in stdout
    assert "explained variance" in stdout and "L0" in stdout and "dead features" in stdout
    assert load_sae(out).d_sae == 64


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--hook", "blocks.9.mlp.hook_post"], "has no hook 'blocks.9.mlp.hook_post'"),
        (["--hook", HOOK, "--k", "100"], "--k 100 is more than --d-sae 64"),
        (["--hook", HOOK, "--d-sae", "0"], "--d-sae must be at least 1"),
        (["--hook", HOOK, "--dataset", "no-such-dataset-xyz"], "cannot load dataset 'no-such-dataset-xyz'"),
    ],
)
def test_cli_bad_input(capsys, tiny_model_dir, tmp_path, args, fragment):
    out = tmp_path / "sae"
    code, _, err = train_sae_cli(
        capsys, "--model", str(tiny_model_dir), "--d-sae", "64", *args, "--out", str(out)
    )
    assert_failed(code, err, fragment)
    assert not out.exists() and not Path(f"{out}.partial").exists()


def test_cli_unknown_model(capsys, tmp_path):
    code, _, err = train_sae_cli(
        capsys, "--model", "no-such-org/no-such-model", "--hook", HOOK, "--out", str(tmp_path / "sae")
    )
    assert_failed(code, err, "cannot load model 'no-such-org/no-such-model'")


def test_cli_existing_out(capsys, tmp_path):
    out = tmp_path / "sae"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = train_sae_cli(capsys, "--hook", HOOK, "--out", str(out))
    assert_failed(code, err, "exists: pass --overwrite to replace it")
    assert (out / "keep.txt").read_text() == "mine"


# the train-sae bar once it counts tokens: SAELens's training loop has taken a batch
TRAINING = re.compile(r"train-sae: +\d+%\|[^|]*\| *[1-9]")


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_training_keeps_the_old_sae(tmp_path, tiny_model_dir, docs_jsonl, trained_sae, how):
    """Ctrl-C and kill stay ours during SAELens's training loop: a clean stop, the old SAE intact."""
    out = tmp_path / "sae"
    shutil.copytree(trained_sae.path, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    corpus = tmp_path / "long.jsonl"
    corpus.write_text(docs_jsonl.read_text() * 10)
    log = tmp_path / "stderr.txt"
    cmd = [
        sys.executable,
        "-m",
        "neurodash.cli",
        "train-sae",
        "--model",
        str(tiny_model_dir),
        "--dataset",
        str(corpus),
        "--hook",
        HOOK,
        "--d-sae",
        "64",
        "--k",
        "4",
        "--tokens",
        "200000",
        "--ctx",
        "32",
        "--batch-tokens",
        "128",
        "--out",
        str(out),
        "--overwrite",
    ]
    with log.open("w") as err:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
    deadline = time.monotonic() + 600  # a hang guard only
    while not TRAINING.search(log.read_text()):  # until SAELens's loop has trained on some tokens
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.05)
    proc.send_signal(how)
    assert proc.wait(timeout=60) == 130, log.read_text()
    assert "interrupted: nothing was written" in log.read_text()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not Path(f"{out}.partial").exists()
