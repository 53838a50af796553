"""``neurodash explain``: the pattern explainer over a store, bad input as one line (exit 2), finished
units kept when a run stops; the LLM explainer against ``transformers serve`` with the embedded model
(a malformed answer comes from tests/llm_server.py: a real server sends none on request)."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import assert_failed
from llm_server import CANNED, serving
from transformers_serve import transformers_serving

from neurodash.config import PrecomputeConfig
from neurodash.explain import PATTERN, PATTERN_N2G
from neurodash.explain_run import explain_store
from neurodash.heldout import heldout_path
from neurodash.storage.explanations import Explanations
from neurodash.units import UnitRef

ROOT = Path(__file__).resolve().parents[2]


def neurodash(*args: str | Path) -> tuple[int, str]:
    """Run the CLI as a user does: its exit status and stderr (no traceback allowed)."""
    done = _run(*args)
    return done.returncode, done.stderr


def _run(*args: str | Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "neurodash", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


def assert_one_line(code: int, err: str, fragment: str, *paths: Path) -> None:
    """One ``error:`` line, exit status 2, nothing else said but progress bars."""
    assert_failed(code, err, fragment, *paths)
    said = [line for line in err.splitlines() if line.strip() and "|" not in line]
    assert len(said) == 1, err


@pytest.fixture()
def store(small_store, tmp_path):
    """The small store, linked into a folder of the test's own (explanations are written beside it)."""
    link = tmp_path / "store.duckdb"
    link.symlink_to(small_store)
    return link


def test_explain_writes_every_neuron_and_feature_then_skips_them(store):
    code, err = neurodash("explain", store, "--no-fresh")  # a hand-built store: no model to run
    assert code == 0, err
    got = Explanations.beside(store).all(PATTERN)
    assert {e.ref.source_id for e in got} == {"L0.mlp", "L1.mlp", "L1.sae.res"}
    assert len(got) == 6 + 6 + 4
    scored = [e for e in got if e.correlation is not None]
    assert scored and all(-1 <= e.correlation <= 1 and e.n_scored > 0 for e in scored)
    assert neurodash("explain", store, "--layers", "1", "--no-fresh")[0] == 0
    again = explain_store(store, layers=(1,))
    assert (again.done, again.skipped) == (0, 10)
    assert explain_store(store, units=["L1N2"], redo=True).done == 1


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--layers", "7"), "no neurons or features of layer 7"),
        (("--layers", "x"), "layers"),
        (("--units", "L0N99"), "out of range"),
        (("--units", "banana"), "cannot read unit reference"),
        (("--explainer", "http://127.0.0.1:9/v1"), "--explainer needs --explainer-model"),
        (("--explainer-model", "m"), "--explainer-model needs --explainer"),
        (("--explainer", "localhost:8000", "--explainer-model", "m"), "not an http"),
        (("--explainer", "http://x/v1", "--explainer-model", "m", "--timeout", "soon"), "--timeout"),
    ],
)
def test_bad_input_is_one_line(store, args, fragment):
    code, err = neurodash("explain", store, *args)
    assert_one_line(code, err, fragment, Explanations.beside(store).path)


def test_a_missing_store_or_out_folder_is_one_line(store, tmp_path):
    assert_one_line(*neurodash("explain", tmp_path / "none.duckdb"), "no store")
    out = tmp_path / "nowhere" / "x.duckdb"
    assert_one_line(*neurodash("explain", store, "--out", out), "does not exist")


def test_an_interrupted_run_keeps_its_finished_batches(store):
    def stop_after_first_batch(done: int, total: int) -> None:
        if done:
            raise KeyboardInterrupt

    summary = explain_store(store, batch=4, progress=stop_after_first_batch)
    assert summary.interrupted and summary.done == 4
    assert len(Explanations.beside(store).all()) == 4
    assert explain_store(store).skipped == 4  # and a second run goes on from there


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_endpoint_is_one_line(store):
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    code, err = neurodash(
        "explain", store, "--units", "L0N0", "--explainer", url, "--explainer-model", "m", "--no-fresh"
    )
    assert_one_line(code, err, "cannot reach the explainer")


def test_a_malformed_answer_mid_run_is_one_line_and_keeps_the_finished_units(store):
    with serving(good_answers=2) as (url, chat):
        broken = url.replace("/v1", "/broken/v1")
        code, err = neurodash(
            "explain", store, "--layers", "0", "--explainer", broken, "--explainer-model", "m", "--no-fresh"
        )
    assert_failed_line = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(assert_failed_line) == 1 and "without a chat completion" in err, err
    kept = Explanations.beside(store).all("llm:m")
    assert [e.text for e in kept] == [CANNED, CANNED]
    assert all(e.details["simulator"] == "quoted tokens" for e in kept)


@pytest.mark.model
def test_the_llm_explainer_against_transformers_serve(store, embedded_model_dir, tmp_path):
    """``transformers serve`` with the embedded model, offline: explanations stored and scored, and a
    timeout is one line."""
    with transformers_serving(embedded_model_dir, tmp_path) as served:
        explain = (
            "explain",
            store,
            "--explainer",
            served.url,
            "--explainer-model",
            served.model,
            "--no-fresh",
        )
        code, err = neurodash(*explain, "--units", "L0N0,L1F1", "--timeout", "600")
        assert code == 0, err
        assert served.chat_requests() == 2
        got = {e.ref: e for e in Explanations.beside(store).all(f"llm:{served.model}")}
        assert set(got) == {UnitRef("L0.mlp", 0), UnitRef("L1.sae.res", 1)}
        assert all(e.text and e.n_scored > 0 for e in got.values())
        assert all(e.correlation is None or -1 <= e.correlation <= 1 for e in got.values())
        assert all(e.details["endpoint"] == served.url for e in got.values())
        code, err = neurodash(*explain, "--units", "L0N1", "--timeout", "0.01")
        assert_one_line(code, err, "did not answer within 0.01 s")


def test_the_demo_explains_its_sae_layer_once_on_fresh_text(
    tiny_pipeline_store, tmp_path, monkeypatch, capsys
):
    import neurodash.cli as cli

    store = tmp_path / "tiny.duckdb"
    store.symlink_to(tiny_pipeline_store)
    monkeypatch.setattr(cli, "DEMO_SAE_LAYER", 1)
    monkeypatch.setattr(cli, "DEMO_HELDOUT_TOKENS", 256)
    cli.explain_demo(store)
    assert "explained 72 units of layer 1" in capsys.readouterr().out
    got = Explanations.beside(store).all(PATTERN)
    assert {e.ref.source_id for e in got} == {"L1.mlp", "L1.sae"}
    assert all(e.details["held_out"]["text"] == "fresh" for e in got)
    assert heldout_path(store).is_file()
    cli.explain_demo(store)  # a second run has nothing left to do
    assert "explained" not in capsys.readouterr().out


def test_fresh_text_needs_the_stores_model_and_corpus(store, tiny_model_dir, tmp_path):
    """A store that does not record its precompute, a --heldout-tokens below one window, and a corpus
    with no window left after the store's: one line each, nothing written."""
    from precompute import run_precompute

    written = (Explanations.beside(store).path, heldout_path(store))
    assert_one_line(*neurodash("explain", store), "--no-fresh", *written)
    corpus = tmp_path / "short.txt"
    corpus.write_text("def f(x):\n    return x + 1\n" * 40)
    whole = tmp_path / "whole.duckdb"
    cfg = PrecomputeConfig(
        out=whole, model=str(tiny_model_dir), dataset=str(corpus), layers=(0,), tokens=10**6, ctx=32
    )
    run_precompute(dataclasses.replace(cfg, heads=False, scores=False), progress=False)
    written = (Explanations.beside(whole).path, heldout_path(whole))
    assert_one_line(*neurodash("explain", whole, "--heldout-tokens", "8"), "less than one window", *written)
    assert_one_line(*neurodash("explain", whole), "no window of --ctx 32 tokens after the", *written)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--model-steps",), "cannot load model"),
        (("--model-steps", "--explainer", "http://x/v1", "--explainer-model", "m"), "--model-steps is for"),
    ],
)
def test_model_steps_asked_for_and_impossible_is_one_line(store, args, fragment):
    code, err = neurodash("explain", store, "--units", "L0N0", "--no-fresh", *args)
    assert_one_line(code, err, fragment, Explanations.beside(store).path)


def test_model_steps_on_a_store_whose_model_loads(tiny_store, tmp_path):
    link = tmp_path / "tiny.duckdb"
    link.symlink_to(tiny_store)
    done = _run("explain", link, "--units", "L1N0,L1N1", "--model-steps")
    assert done.returncode == 0, done.stderr
    assert "explained by pattern+n2g" in done.stdout
    got = Explanations.beside(link).all()
    assert {e.explainer for e in got} == {PATTERN_N2G} and len(got) == 2
