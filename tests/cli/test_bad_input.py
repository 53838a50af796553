"""Every bad input of issue 16, section 2, through the real command line: one ``error:`` line on
stderr, exit status 2, nothing written (no output, no ``.partial``). One parametrised test per row
of the list, so that the list can only grow; a row whose input is accepted says what it does instead.

Each case runs ``python -m neurodash`` in a subprocess (as a user does), on the tiny model where a
model is needed, offline.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from cli_helpers import assert_failed

from neurodash.errors import NeurodashError
from neurodash.storage import Store
from neurodash.storage.sets import ExampleSets

ROOT = Path(__file__).resolve().parents[2]


def neurodash(*args: str | Path, home: Path | None = None) -> tuple[int, str]:
    """Run the CLI as a user does: its exit status and stderr (no traceback allowed)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    if home is not None:
        env["NEURODASH_HOME"] = str(home)
    done = subprocess.run(
        [sys.executable, "-m", "neurodash", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stderr


def assert_one_line(code: int, err: str, fragment: str, *paths: Path) -> None:
    """``cli_helpers.assert_failed``, and nothing else said but progress bars."""
    assert_failed(code, err, fragment, *paths)
    said = [line for line in err.splitlines() if line.strip() and "|" not in line]
    assert len(said) == 1, err


def precompute(model: Path, out: Path, *extra: str | Path) -> list[str | Path]:
    return [
        "precompute",
        "--model",
        model,
        "--out",
        out,
        "--tokens",
        "256",
        "--ctx",
        "32",
        "--layers",
        "0",
        *extra,
    ]


def written(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- a truncated or corrupt store, given to info, serve or export ----------------------------
def _damaged_store(small_store: Path, folder: Path, how: str) -> Path:
    path = folder / f"{how}.duckdb"
    data = small_store.read_bytes()
    if how == "truncated":
        path.write_bytes(data[:20_000])
    else:  # a block overwritten past the headers: its checksum no longer matches
        path.write_bytes(data[:12_388] + b"\xff" * 5000 + data[17_388:])
    return path


@pytest.mark.parametrize("how", ["truncated", "corrupt"])
@pytest.mark.parametrize("command", ["info", "serve", "export"])
def test_damaged_store(small_store, tmp_path, how, command):
    store = _damaged_store(small_store, tmp_path, how)
    out = tmp_path / "out.csv"
    extra = ["--units", "L0N1", "--out", out] if command == "export" else []
    code, err = neurodash(command, store, *extra, home=tmp_path / "home")
    assert_one_line(code, err, f"{store} is not a readable neurodash store", out)
    assert ("cut short" if how == "truncated" else "cannot read") in err


# --- the corpus: empty, text that is null or a number, a malformed line, a binary file -------
BINARY = bytes(range(256)) * 8

CORPORA = {  # file name, content, what the error line says
    "empty-file": ("c.jsonl", b"", "the corpus {path} is empty: it is 0 bytes"),
    "empty-text": ("c.jsonl", b'{"text": ""}\n{"text": "   "}\n', "the corpus is empty"),
    "null-text": (
        "c.jsonl",
        b'{"text": null}\n{"text": null}\n',
        "its column 'text' holds null in every row",
    ),
    "number-text": ("c.jsonl", b'{"text": 5}\n{"text": 7}\n', "{path} line 1: its 'text' is a number"),
    "number-among-text": (
        "c.jsonl",
        b'{"text": "some words"}\n{"text": "more"}\n{"text": 3.5}\n',
        "{path} line 3: its 'text' is a number, not a string",
    ),
    "malformed-line": (
        "c.jsonl",
        b'{"text": "fine"}\n{"text": "fine"}\n{"text": broken\n',
        "{path} line 3: not valid JSON",
    ),
    "not-an-object": ("c.jsonl", b'{"text": "fine"}\n[1, 2]\n', "{path} line 2: a JSON list, not an object"),
    "binary-jsonl": ("c.jsonl", BINARY, "{path} line 1: not text (it holds a NUL byte: a binary file?)"),
    "binary-txt": (
        "c.txt",
        b"some text\n" + bytes(range(128, 256)),
        "{path} line 2: not UTF-8 text (byte 0x80",
    ),
}


@pytest.mark.parametrize("case", list(CORPORA))
def test_bad_corpus(tiny_model_dir, tmp_path, case):
    name, content, message = CORPORA[case]
    corpus = tmp_path / name
    corpus.write_bytes(content)
    out = tmp_path / "s.duckdb"
    code, err = neurodash(*precompute(tiny_model_dir, out, "--dataset", corpus))
    assert_one_line(code, err, message.format(path=corpus), out)
    assert written(tmp_path) == [name]


# --- --ctx longer than the model reads ------------------------------------------------------
@pytest.mark.parametrize("command", ["precompute", "train-sae"])
def test_ctx_longer_than_the_model(tiny_model_dir, docs_jsonl, tmp_path, command):
    out = tmp_path / "out"
    args = ["--model", tiny_model_dir, "--dataset", docs_jsonl, "--ctx", "1024", "--tokens", "4096"]
    if command == "train-sae":
        args += ["--hook", "blocks.1.mlp.hook_post", "--batch-tokens", "1024"]
    code, err = neurodash(command, *args, "--out", out)
    assert_one_line(code, err, "--ctx 1024 is longer than model", out)
    assert "at most 256 tokens" in err and written(tmp_path) == []


# --- --top-k out of range, or too large for the memory it would need --------------------------
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1", "--top-k must be at least 1"),
        ("0", "--top-k must be at least 1"),
        ("1e9", "would need about"),
    ],
)
def test_top_k(tiny_model_dir, docs_jsonl, tmp_path, value, message):
    out = tmp_path / "s.duckdb"
    code, err = neurodash(*precompute(tiny_model_dir, out, "--dataset", docs_jsonl, "--top-k", value))
    assert_one_line(code, err, message, out)
    if "would need" in message:
        assert "TB on cpu, which has" in err  # how much it needs, and how much there is
    assert written(tmp_path) == []


# --- --device that is not one, or not here --------------------------------------------------
def _unavailable(device: str) -> str:
    """``device`` where this machine lacks it; otherwise one it lacks (cuda:N past the last)."""
    import torch

    if device == "cuda" and torch.cuda.is_available():
        return f"cuda:{torch.cuda.device_count()}"
    if device == "mps" and torch.backends.mps.is_available():
        return "mps:0"  # not a device name neurodash takes
    return device


@pytest.mark.parametrize("device", ["tpu9", "cuda", "cuda:7", "mps"])
def test_device(tiny_model_dir, docs_jsonl, tmp_path, device):
    out = tmp_path / "s.duckdb"
    device = _unavailable(device)
    code, err = neurodash(*precompute(tiny_model_dir, out, "--dataset", docs_jsonl, "--device", device))
    assert_one_line(code, err, f"--device {device}: ", out)
    assert written(tmp_path) == []


@pytest.mark.parametrize("dtype", ["float16", "bf16", "int8"])
def test_dtype(tiny_model_dir, docs_jsonl, tmp_path, dtype):
    out = tmp_path / "s.duckdb"
    code, err = neurodash(*precompute(tiny_model_dir, out, "--dataset", docs_jsonl, "--dtype", dtype))
    assert_one_line(code, err, f"--dtype {dtype}: use float32 or bfloat16", out)
    assert written(tmp_path) == []


# --- a model whose activations are not finite (overflow, broken weights) ----------------------
def test_activations_that_are_not_finite(tiny_model_dir, docs_jsonl, tmp_path):
    """A NaN weight in layer 0's MLP: its neurons' activations are NaN from the first batch."""
    import shutil

    import torch
    from transformers import LlamaForCausalLM

    broken = tmp_path / "model"
    shutil.copytree(tiny_model_dir, broken)
    model = LlamaForCausalLM.from_pretrained(broken)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = torch.nan
    model.save_pretrained(broken)
    out = tmp_path / "runs" / "s.duckdb"
    out.parent.mkdir()
    code, err = neurodash(*precompute(broken, out, "--dataset", docs_jsonl))
    assert_one_line(code, err, "L0.mlp: activations that are not finite (NaN or inf)", out)
    assert written(out.parent) == []


# --- --tokens beyond the corpus: accepted, said, and the store keeps the real count ------------
def test_tokens_beyond_the_corpus(tiny_model_dir, docs_jsonl, tmp_path):
    out = tmp_path / "s.duckdb"
    code, err = neurodash(*precompute(tiny_model_dir, out, "--dataset", docs_jsonl, "--tokens", "1e15"))
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "fewer than --tokens 1,000,000,000,000,000: all of it was read" in notes[0]
    with Store(out) as store:
        n_tokens = int(store.meta["n_tokens"])
    assert 0 < n_tokens < 10**6 and f"the corpus holds {n_tokens:,} tokens" in notes[0]


# --- export with no selection -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "say which units to export"),
        (["--buckets", "top"], "say which units to export"),
        (["--all", "--units", "L0N1"], "--all exports every unit"),
    ],
)
def test_export_without_a_selection(small_store, tmp_path, args, message):
    out = tmp_path / "x.parquet"
    code, err = neurodash("export", small_store, *args, "--out", out)
    assert_one_line(code, err, message, out)
    assert written(tmp_path) == []
    assert neurodash("export", small_store, "--all", "--out", out)[0] == 0  # said: every unit


# --- a local path that does not exist ---------------------------------------------------------
@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--model", "./no-such-model", "--model ./no-such-model: does not exist"),
        ("--model", "{tmp}/missing/model", "--model {tmp}/missing/model: does not exist"),
        ("--model", "{corpus}", "is a file; a local model is a folder"),
        ("--dataset", "./no-such-corpus.jsonl", "--dataset ./no-such-corpus.jsonl: no such file or folder"),
        ("--dataset", "corpora/mine.txt", "--dataset corpora/mine.txt: no such file or folder"),
        ("--dataset", "~/no/such/folder", "--dataset ~/no/such/folder: no such file or folder"),
        ("--sae", "./no-such-sae", "no SAE folder at ./no-such-sae: it does not exist"),
        # a hub name is still a hub name
        ("--dataset", "Skylion007/openwebtext", "not cached and the Hugging Face hub is not reachable"),
    ],
)
def test_local_path_that_does_not_exist(tiny_model_dir, docs_jsonl, tmp_path, option, value, message):
    out = tmp_path / "s.duckdb"
    value, message = (s.format(tmp=tmp_path, corpus=docs_jsonl) for s in (value, message))
    given = {"--model": tiny_model_dir, "--dataset": docs_jsonl, option: value}
    args = precompute(given.pop("--model"), out, *[x for option_value in given.items() for x in option_value])
    code, err = neurodash(*args)
    assert_one_line(code, err, message, out)
    assert written(tmp_path) == []


# --- what killed runs left in the output folder -----------------------------------------------
HOLD_LOCK = """
import sys, duckdb
con = duckdb.connect(sys.argv[1])
con.execute("CREATE TABLE t (x INTEGER)")
print("holding", flush=True)
sys.stdin.read()
"""


def _killed_run_leftovers(partial: Path) -> None:
    """What ``kill -9`` leaves: a DuckDB file no process holds, and its write-ahead log."""
    con = duckdb.connect(str(partial))
    con.execute("CREATE TABLE sequences (x INTEGER)")
    con.close()
    Path(f"{partial}.wal").write_bytes(b"a killed run's write-ahead log")


@pytest.mark.parametrize("run_to", ["another-path", "the-live-path"])
def test_leftovers_of_killed_runs(tiny_model_dir, docs_jsonl, tmp_path, run_to):
    """A run removes the partial stores no live process holds (DuckDB's lock says which), says so
    in one line, and keeps a live run's; a run to the path a live run writes is refused."""
    _killed_run_leftovers(tmp_path / "killed.duckdb.partial")
    live = tmp_path / "live.duckdb.partial"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(live)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "holding\n"
        out = tmp_path / ("live.duckdb" if run_to == "the-live-path" else "new.duckdb")
        code, err = neurodash(*precompute(tiny_model_dir, out, "--dataset", docs_jsonl))
        notes = [line for line in err.splitlines() if line.startswith("note:")]
        assert len(notes) == 1 and "killed.duckdb.partial, killed.duckdb.partial.wal" in notes[0], err
        assert "live" not in notes[0]
        if run_to == "the-live-path":  # refused before the model loads; the live run's file kept
            assert_failed(code, err, f"another run is writing {out} now")  # after the note
            assert [p for p in written(tmp_path) if "live" not in p] == []
        else:
            assert code == 0, err
            assert [p for p in written(tmp_path) if "live" not in p] == ["new.duckdb"]
        assert live.exists(), "a live run's partial store was removed"
    finally:
        holder.communicate("", timeout=60)


# --- a sets or results file damaged past its header, found inside a transaction ---------------
def _damaged_sets_file(small_store: Path, path: Path) -> None:
    """A sets file whose examples fill a block of their own, that block then overwritten: the file
    opens, its tables are there, and reading the examples finds the damage."""
    sets = ExampleSets(path)
    with Store(small_store) as store:
        units = [f"{s.source_id}/{unit}" for s in store.sources() for unit in range(s.n_units)]
        for i, ref in itertools.product(range(40), units):
            with contextlib.suppress(NeurodashError):  # a unit without top examples
                sets.add_top(store, f"set{i}", ref, note=f"n{i}" * 300)
    con = duckdb.connect(str(path), read_only=True)
    (block,) = con.execute("SELECT max(block_id) FROM pragma_storage_info('set_examples')").fetchone()
    (block_size,) = con.execute("SELECT block_size FROM pragma_database_size()").fetchone()
    con.close()
    with path.open("r+b") as f:
        f.seek(3 * 4096 + block * block_size + 4096)
        f.write(b"\xff" * 4096)


def test_damaged_sets_file(small_store, tmp_path):
    sets_file = tmp_path / "sets.duckdb"
    _damaged_sets_file(small_store, sets_file)
    out = tmp_path / "x.csv"
    code, err = neurodash("export", small_store, "--set", "set0", "--sets-file", sets_file, "--out", out)
    assert_one_line(code, err, f"sets file {sets_file} is damaged", out)


# --- a command line argparse cannot read -------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["precompute", "--top-k", "abc", "--out", "x.duckdb"], "--top-k: invalid whole number: 'abc'"),
        (["nosuch"], "invalid choice: 'nosuch'"),
        (["export"], "the following arguments are required"),
        (["serve", "s.duckdb", "--port", "http"], "--port: invalid"),
    ],
)
def test_malformed_command_line(tmp_path, args, message):
    code, err = neurodash(*args)
    assert_one_line(code, err, message)
    assert "usage:" not in err and "(see neurodash" in err
    assert written(tmp_path) == []
