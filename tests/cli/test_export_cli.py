"""``neurodash export``: units, ranges and sets from the command line; bad input as one clear line
and exit status 2, nothing written; an interrupted export writes nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from small_store import DEAD, expected_rows, read_back

from neurodash.cli import main
from neurodash.storage import Store
from neurodash.storage.sets import ExampleSets
from neurodash.units import UnitRef

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def store(small_store):
    with Store(small_store) as s:
        yield s


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["export", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_exports(small_store, store, tmp_path, capsys):
    out = tmp_path / "x.jsonl"
    code, printed, _ = run_cli(
        capsys,
        small_store,
        "--units",
        "L0N1,L1.mlp/2",
        "--units",
        "L1F0",
        "--buckets",
        "top,q0.4",
        "--out",
        out,
    )
    assert code == 0 and f"wrote {out}" in printed
    refs = [UnitRef("L0.mlp", 1), UnitRef("L1.mlp", 2), UnitRef("L1.sae.res", 0)]
    assert read_back(out, "jsonl") == expected_rows(store, refs, ["top", "q0.40"])


def test_cli_ranges(small_store, store, tmp_path, capsys):
    out = tmp_path / "x.data"
    code, _, err = run_cli(
        capsys,
        small_store,
        "--layers",
        "0-1",
        "--sources",
        "L0.mlp",
        "--min-density",
        "0.15",
        "--max-density",
        "0.45",
        "--min-max-act",
        "2",
        "--range",
        "polysemanticity=:0.25",
        "--format",
        "parquet",
        "--out",
        out,
    )
    assert code == 0, err
    assert pq.read_table(out).to_pylist() == expected_rows(store, [UnitRef("L0.mlp", 2)])


def test_cli_exports_a_set(small_store, store, tmp_path, capsys):
    sets = ExampleSets(tmp_path / "my.sets.duckdb")
    sets.add_top(store, "paper", "L0N3")
    out = tmp_path / "x.csv"
    code, _, err = run_cli(capsys, small_store, "--set", "paper", "--sets-file", sets.path, "--out", out)
    assert code == 0, err
    assert len(read_back(out, "csv")) == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--units", "L9N0"], "no source 'L9.mlp'"),
        (["--sources", "L0.sae"], "no source 'L0.sae'"),
        (["--layers", "0-x"], "cannot read layers '0-x'"),
        (["--layers", "1-0"], "names no layer"),
        (["--all", "--buckets", "top,middle"], "no bucket 'middle'"),
        (["--range", "skew"], "cannot read range 'skew'"),
        (["--all", "--format", "xml"], "unknown format 'xml'"),
        (["--units", str(DEAD)], "the selection has no examples"),
        (["--set", "nope"], "no set named 'nope'"),
    ],
)
def test_cli_bad_input(small_store, tmp_path, capsys, args, message):
    out = tmp_path / "x.csv"
    code, _, err = run_cli(capsys, small_store, *args, "--out", out)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_existing_output(small_store, tmp_path, capsys):
    out = tmp_path / "x.csv"
    out.write_text("precious")
    code, _, err = run_cli(capsys, small_store, "--all", "--out", out)
    assert code == 2 and "exists: pass --overwrite" in err and out.read_text() == "precious"
    assert run_cli(capsys, small_store, "--all", "--out", out, "--overwrite")[0] == 0
    assert out.read_text() != "precious"


# An export whose third chunk never comes: it says when each chunk is decoded, so the signal lands
# mid-stream however loaded the machine is.
STALLED_EXPORT = """
import sys, threading
from neurodash import export
from neurodash.cli import main
decode, calls = export._decode, []
def stalled(*args):
    calls.append(1)
    if len(calls) > 2:
        threading.Event().wait()
    print("decoded a chunk", file=sys.stderr, flush=True)
    return decode(*args)
export._decode, export.CHUNK_UNITS = stalled, 1
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("fmt", ["parquet", "html"])
@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_export_writes_nothing(small_store, tmp_path, fmt, how):
    out = tmp_path / f"x.{fmt}"
    partial = Path(f"{out}.partial")
    proc = subprocess.Popen(
        [sys.executable, "-c", STALLED_EXPORT, "export", str(small_store), "--all", "--out", str(out)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    said = [proc.stderr.readline() for _ in range(2)]  # blocks until the child says so, or ends
    assert said == ["decoded a chunk\n"] * 2, said + [proc.stderr.read()]
    assert partial.exists()
    os.kill(proc.pid, how)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted: nothing was written" in err, err
    assert list(tmp_path.iterdir()) == []
