"""The CLI on bad input: one clear line, exit status 2, nothing written. And interrupted runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from cli_helpers import assert_failed

from neurodash.app import ids
from neurodash.cli import main
from neurodash.meaning import search_by_meaning
from neurodash.storage import Store
from neurodash.storage.embeddings import EMBEDDING_MODEL, EXPLANATION, Embeddings
from neurodash.storage.explanations import Explanations
from neurodash.storage.sets import ExampleSets, sets_path

ROOT = Path(__file__).resolve().parents[2]


def run_cli(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


def precompute_args(model: Path, out: Path, *extra: str) -> list[str]:
    return ["precompute", "--model", str(model), "--out", str(out), "--tokens", "256", "--ctx", "32", *extra]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_unknown_model(capsys, tmp_path):
    out = tmp_path / "s.duckdb"
    code, err = run_cli(capsys, "precompute", "--model", "no-such-org/no-such-model", "--out", str(out))
    assert_failed(code, err, "cannot load model 'no-such-org/no-such-model'", out)


def test_folder_that_is_not_a_model(capsys, tmp_path):
    out = tmp_path / "s.duckdb"
    code, err = run_cli(capsys, *precompute_args(tmp_path, out))
    assert_failed(code, err, "not a Hugging Face model folder", out)


def test_unknown_dataset(capsys, tiny_model_dir, tmp_path):
    out = tmp_path / "s.duckdb"
    code, err = run_cli(capsys, *precompute_args(tiny_model_dir, out, "--dataset", "no-such-dataset-xyz"))
    assert_failed(code, err, "cannot load dataset 'no-such-dataset-xyz'", out)


def test_unknown_text_column(capsys, tiny_model_dir, tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"content": "hello world"}])
    out = tmp_path / "s.duckdb"
    code, err = run_cli(capsys, *precompute_args(tiny_model_dir, out, "--dataset", str(corpus)))
    assert_failed(code, err, "no text column 'text' (columns: content)", out)


def test_layer_out_of_range(capsys, tiny_model_dir, docs_jsonl, tmp_path):
    out = tmp_path / "s.duckdb"
    code, err = run_cli(
        capsys, *precompute_args(tiny_model_dir, out, "--dataset", str(docs_jsonl), "--layers", "0,5")
    )
    assert_failed(code, err, "layer 5 is out of range", out)


def test_unreadable_layers(capsys, tiny_model_dir, tmp_path):
    out = tmp_path / "s.duckdb"
    code, err = run_cli(capsys, *precompute_args(tiny_model_dir, out, "--layers", "zero"))
    assert_failed(code, err, "cannot read layers 'zero'", out)


def test_corpus_shorter_than_one_window(capsys, tiny_model_dir, tmp_path):
    corpus = tmp_path / "short.txt"
    corpus.write_text("Just a few words.")
    out = tmp_path / "s.duckdb"
    code, err = run_cli(capsys, *precompute_args(tiny_model_dir, out, "--dataset", str(corpus)))
    assert_failed(code, err, "shorter than one window of --ctx 32 tokens", out)


def test_out_exists_is_refused_and_kept(capsys, tiny_model_dir, tmp_path):
    out = tmp_path / "s.duckdb"
    out.write_bytes(b"precious")
    code, err = run_cli(capsys, *precompute_args(tiny_model_dir, out))
    assert code == 2 and "exists: pass --overwrite" in err
    assert out.read_bytes() == b"precious"


@pytest.mark.parametrize("where", ["missing-folder", "file-as-folder", "read-only"])
def test_store_path_not_writable(capsys, tiny_model_dir, tmp_path, where):
    parent = tmp_path / where
    if where == "file-as-folder":
        parent.write_text("a file")
    elif where == "read-only":
        parent = Path("/proc/self")  # a folder nobody, root included, can create files in
    out = parent / "s.duckdb"
    code, err = run_cli(capsys, *precompute_args(tiny_model_dir, out))
    assert_failed(code, err, f"cannot write {out}", out)


def test_missing_store(capsys, tmp_path):
    code, err = run_cli(capsys, "info", str(tmp_path / "nope.duckdb"))
    assert_failed(code, err, "no store at")


def test_not_a_store(capsys, tmp_path):
    bogus = tmp_path / "bogus.duckdb"
    bogus.write_text("not a database")
    code, err = run_cli(capsys, "serve", str(bogus))
    assert_failed(code, err, "is not a readable neurodash store")


def test_precompute_and_info(capsys, tiny_model_dir, docs_jsonl, tmp_path):
    out = tmp_path / "s.duckdb"
    assert main(precompute_args(tiny_model_dir, out, "--dataset", str(docs_jsonl), "--layers", "1")) == 0
    assert main(["info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "L1.mlp" in printed and "blocks.1.mlp.hook_post" in printed
    assert "L1.attn" in printed and "blocks.1.attn.hook_z" in printed


def test_precompute_without_heads(tiny_model_dir, docs_jsonl, tmp_path):
    out = tmp_path / "s.duckdb"
    args = precompute_args(tiny_model_dir, out, "--dataset", str(docs_jsonl), "--layers", "1", "--no-heads")
    assert main(args) == 0
    with Store(out) as store:
        assert [s.source_id for s in store.sources()] == ["L1.mlp"]


def test_a_bf16_forward_says_where_the_cpu_would_emulate_it(capsys, tiny_model_dir, docs_jsonl, tmp_path):
    from precompute.device import cpu_computes_bf16

    out = tmp_path / "s.duckdb"
    args = precompute_args(tiny_model_dir, out, "--dataset", str(docs_jsonl), "--layers", "1", "--no-heads")
    code, err = run_cli(capsys, *args, "--dtype", "bfloat16")
    assert code == 0 and out.is_file()
    noted = "--dtype bfloat16 is emulated here, several times slower than float32" in err
    assert noted != cpu_computes_bf16()


def _start_precompute(model: Path, corpus: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "neurodash.cli",
        *precompute_args(model, out, "--dataset", str(corpus), *extra),
    ]
    cmd[cmd.index("--tokens") + 1] = "10000000"  # long enough to interrupt mid-stream
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


# tqdm's "precompute" bar once it counts tokens: a batch went through the model into the partial store
STREAMED = re.compile(rb"precompute: +\d+%\|[^|]*\| *[1-9]")


class _Stderr(threading.Thread):
    """A child's stderr, read as it comes (so the pipe never fills), and whether it says it streams."""

    def __init__(self, proc: subprocess.Popen):
        super().__init__(daemon=True)
        self.proc, self.text, self.streaming = proc, b"", threading.Event()
        self.start()

    def run(self) -> None:
        while chunk := self.proc.stderr.read1(65536):
            self.text += chunk
            if STREAMED.search(self.text):
                self.streaming.set()

    def read(self) -> str:
        self.join(timeout=60)
        return self.text.decode(errors="replace")


def _wait_until_streaming(proc: subprocess.Popen, err: _Stderr, partial: Path) -> None:
    """Until the run says it has streamed tokens into its partial store. No fixed sleep: on a loaded
    machine the wait grows, and the signal still lands mid-stream."""
    deadline = time.monotonic() + 600  # a hang guard only
    while not err.streaming.wait(0.2):
        assert proc.poll() is None, err.read()
        assert time.monotonic() < deadline, "precompute never started streaming"
    assert partial.exists()


@pytest.fixture
def long_corpus(tmp_path, docs_jsonl) -> Path:
    rows = [json.loads(line) for line in docs_jsonl.read_text().splitlines()]
    return write_jsonl(tmp_path / "long.jsonl", rows * 50)


@pytest.fixture
def existing_store(tmp_path, tiny_model_dir, docs_jsonl) -> tuple[Path, bytes]:
    out = tmp_path / "s.duckdb"
    assert main(precompute_args(tiny_model_dir, out, "--dataset", str(docs_jsonl), "--layers", "0")) == 0
    return out, out.read_bytes()


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda how: how.name)
def test_interrupted_run_loses_nothing(tiny_model_dir, long_corpus, existing_store, how):
    out, before = existing_store
    partial = Path(str(out) + ".partial")
    proc = _start_precompute(tiny_model_dir, long_corpus, out, "--overwrite")
    stderr = _Stderr(proc)
    _wait_until_streaming(proc, stderr, partial)
    proc.send_signal(how)
    proc.wait(timeout=300)
    err = stderr.read()
    assert proc.returncode != 0, err
    assert out.read_bytes() == before, "the existing store was damaged"
    if how != signal.SIGKILL:  # a clean stop also removes its partial file
        assert "interrupted: nothing was written" in err
        assert not partial.exists()
    else:  # killed mid-stream: the partial file (and maybe its WAL) stays, for the next run to clean up
        assert partial.exists()
        wal = Path(str(partial) + ".wal")
        if not wal.exists():
            wal.write_bytes(b"a killed run's write-ahead log")
    with Store(out) as store:  # still a whole, readable store
        assert [s.source_id for s in store.sources()] == ["L0.mlp", "L0.attn"]
    assert main(precompute_args(tiny_model_dir, out, "--dataset", str(long_corpus), "--overwrite")) == 0
    assert not partial.exists(), "a later run cleans up a killed run's partial file"
    assert not Path(str(partial) + ".wal").exists()


@pytest.mark.model
def test_demo_builds_its_store_once(monkeypatch, tmp_path, embedded_model_dir, capsys):
    import neurodash.cli as cli

    monkeypatch.setenv("NEURODASH_HOME", str(tmp_path))
    monkeypatch.setattr(cli, "DEMO_LAYERS", "0,29")
    monkeypatch.setattr(cli, "DEMO_TOKENS", 512)
    monkeypatch.setattr(cli, "DEMO_SAE_TOKENS", 4096)
    monkeypatch.setattr(cli, "DEMO_SAE_WIDTH", 256)
    monkeypatch.setattr("precompute.models.embedded_model_folder", lambda name=None: embedded_model_dir)
    assert main(["demo", "--no-serve"]) == 0
    store = tmp_path / "demo.duckdb"
    with Store(store) as s:
        assert [x.source_id for x in s.sources()] == ["L0.mlp", "L29.mlp", "L15.sae", "L0.attn", "L29.attn"]
        sae = s.source("L15.sae")
        assert sae.n_units == 256 and {"explained_variance", "l0", "dead_fraction"} <= set(
            sae.config["sae_metrics"]
        )
    explained = Explanations.beside(store).all("pattern")
    assert {e.ref.source_id for e in explained} == {"L15.sae"} and len(explained) == 256
    embedded = Embeddings.beside(store).stored_texts(EMBEDDING_MODEL)  # searchable by meaning
    assert {ref.source_id for ref, _ in embedded} == {"L15.sae", "L0.attn", "L29.attn"}
    assert sum(kind == EXPLANATION for _, kind in embedded) == 256
    assert search_by_meaning(store, "closing brackets", limit=3)
    built = store.stat().st_mtime_ns
    capsys.readouterr()
    assert main(["demo", "--no-serve"]) == 0
    assert store.stat().st_mtime_ns == built, "a second run reuses the store"
    assert "embedded" not in capsys.readouterr().out, "and its embeddings"


def test_precompute_with_an_sae_that_does_not_exist(capsys, tiny_model_dir, docs_jsonl, tmp_path):
    out = tmp_path / "s.duckdb"
    code, err = run_cli(
        capsys,
        *precompute_args(
            tiny_model_dir, out, "--dataset", str(docs_jsonl), "--sae", str(tmp_path / "no-such-sae")
        ),
    )
    assert_failed(code, err, "no-such-sae", out)


# --- serve --sets-file ------------------------------------------------------------------------
def _wait_until_serving(proc: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + 300  # a hang guard only: each try waits for the server's answer
    while True:
        assert proc.poll() is None, "the server stopped"
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                assert answer.status == 200
                return
        except OSError:
            assert time.monotonic() < deadline, "the server never answered"
            time.sleep(0.2)


@pytest.mark.browser
def test_serve_reads_and_writes_the_sets_file_it_is_given(synthetic_store, tmp_path):
    """``neurodash serve --sets-file`` as a user runs it, driven in headless Chromium."""
    from app_screenshot import chrome_options, free_port
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    store = tmp_path / "store.duckdb"
    shutil.copy(synthetic_store, store)
    chosen = tmp_path / "elsewhere" / "mine.duckdb"
    chosen.parent.mkdir()
    sets = ExampleSets(chosen)
    with Store(store) as s:
        sets.add_top(s, "only-in-mine", "L1.mlp/5")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "neurodash.cli",
        "serve",
        str(store),
        "--port",
        str(port),
        "--sets-file",
        str(chosen),
    ]
    log = tmp_path / "serve.log"  # a file, not a pipe: a full pipe would stop the server
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NEURODASH_HOME": str(tmp_path / "home")},
        )
    driver = None
    try:
        _wait_until_serving(proc, url)
        options = chrome_options()
        options.set_capability("goog:loggingPrefs", {"browser": "SEVERE"})  # console errors
        driver = webdriver.Chrome(options=options)
        driver.get(f"{url}/sets?name=only-in-mine")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".nd-remove")) == 20)
        assert f"kept in {chosen}." in driver.find_element(By.TAG_NAME, "body").text
        driver.find_elements(By.CSS_SELECTOR, ".nd-remove")[3].click()  # top #3
        wait.until(
            lambda d: (
                "removed L1N5 top #3 from 'only-in-mine'" in d.find_element(By.ID, ids.SETS_FEEDBACK).text
            )
        )
        assert len(driver.find_elements(By.CSS_SELECTOR, ".nd-remove")) == 19
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
    except Exception:
        print(log.read_text()[-5000:])  # what the server said, shown with the failure
        raise
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        proc.wait(timeout=60)
    assert sorted(sets.items("only-in-mine")["rank"]) == [r for r in range(20) if r != 3]
    assert not sets_path(store).exists(), "the sets file beside the store was made"


@pytest.mark.parametrize("where", ["missing-folder", "a-folder"])
def test_serve_with_a_sets_file_it_cannot_write(capsys, synthetic_store, tmp_path, where):
    if where == "missing-folder":
        path = tmp_path / "nope" / "sets.duckdb"
        message = f"cannot write the sets file {path}: folder {path.parent} does not exist"
    else:
        path, message = tmp_path, f"cannot use {tmp_path} as the sets file: it is a folder"
    code, err = run_cli(capsys, "serve", str(synthetic_store), "--sets-file", str(path))
    assert_failed(code, err, message)
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_that_a_query_turns_into_an_error_is_an_interruption(monkeypatch, capsys, how):
    """DuckDB answers a signal that lands mid-query with its own ``RuntimeError("Query interrupted")``:
    still an interruption (status 130, one line), while the same error without a signal is not."""
    import argparse

    import neurodash.cli as cli

    def query(args) -> None:
        try:
            if args.signal:
                os.kill(os.getpid(), how)
            time.sleep(5 if args.signal else 0)
        except KeyboardInterrupt:
            pass
        raise RuntimeError("Query interrupted")

    class Parser:
        signal = True

        def parse_args(self, argv):
            return argparse.Namespace(run=query, signal=self.signal)

    monkeypatch.setattr(cli, "build_parser", Parser)
    assert main([]) == 130
    assert capsys.readouterr().err == "interrupted: nothing was written\n"
    Parser.signal = False
    with pytest.raises(RuntimeError, match="Query interrupted"):
        main([])
