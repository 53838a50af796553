"""Export: selections, every format read back against the store, curated sets, bad input, interruptions.

The store is built here: two neuron sources and an SAE source, windows that start mid-sequence,
examples inserted in random order, tokens that are hard to carry through CSV, JSON and HTML.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from synthetic import XSS_TOKENS

from neurodash import export as ex
from neurodash.cli import main
from neurodash.errors import NeurodashError
from neurodash.export import Selection, examples_frame, export, export_bytes, resolve_units
from neurodash.storage import Store, StoreWriter
from neurodash.storage.sets import ExampleSets, sets_path
from neurodash.units import NEURON, SAE_FEATURE, Source, UnitRef

ROOT = Path(__file__).resolve().parents[2]
AWKWARD_TOKENS = ("", '"', ",", "\n", "\r\n", "\t", "nan", "NULL", ' a,b"c', "é", "\u2028", "&amp;", "'")
SOURCES = (
    Source("L0.mlp", "test", "blocks.0.mlp.hook_post", NEURON, 0, 6, 192),
    Source("L1.mlp", "test", "blocks.1.mlp.hook_post", NEURON, 1, 6, 192),
    Source("L1.sae.res", "test", "blocks.1.hook_resid_post", SAE_FEATURE, 1, 4, 192, sae="res"),
)
PLAN = [
    ("top", 0),
    ("top", 1),
    ("top", 2),
    ("q0.80", 0),
    ("q0.40", 0),
    ("q0.40", 1),
    ("q0.00", 0),
    ("bottom", 0),
    ("bottom", 1),
]
DEAD = UnitRef("L0.mlp", 5)  # a unit without examples
CTX, WINDOW, N_SEQ = 16, 8, 12
FORMATS = ("csv", "jsonl", "parquet")


def build_store(path: Path, tokens: tuple[str, ...] = XSS_TOKENS + AWKWARD_TOKENS, seed: int = 0) -> Path:
    """A small store with every table filled; examples in random order, windows mid-sequence."""
    rng = np.random.default_rng(seed)
    vocab = ["<bos>", *tokens, *(f" w{i}" for i in range(20))]
    with StoreWriter(path, overwrite=True) as w:
        w.set_meta(model="test <b>model</b>", dataset="test-data", ctx=CTX, n_tokens=N_SEQ * CTX)
        w.append(
            "vocab",
            {
                "model": ["test"] * len(vocab),
                "token_id": np.arange(len(vocab), dtype=np.int32),
                "token": vocab,
            },
        )
        w.append(
            "sequences",
            {
                "seq_id": np.arange(N_SEQ, dtype=np.int64),
                "doc_id": np.arange(N_SEQ, dtype=np.int64),
                "start": np.zeros(N_SEQ, dtype=np.int64),
                "token_ids": rng.integers(0, len(vocab), (N_SEQ, CTX), dtype=np.int32),
            },
        )
        examples = []
        for s in SOURCES:
            w.add_source(s)
            w.append("units", _units(s))
            w.append(
                "scores",
                {
                    "source_id": [s.source_id] * s.n_units,
                    "unit": np.arange(s.n_units, dtype=np.int32),
                    "metric": ["polysemanticity"] * s.n_units,
                    "value": np.arange(s.n_units) / 10,
                },
            )
            examples += [
                _example(rng, s.source_id, u, b, r)
                for u in range(s.n_units)
                for b, r in PLAN
                if UnitRef(s.source_id, u) != DEAD
            ]
        rows = [examples[i] for i in rng.permutation(len(examples))]
        w.append("examples", {k: [row[k] for row in rows] for k in rows[0]})
        return w.commit()


def _units(s: Source) -> dict:
    n = s.n_units
    units = np.arange(n)
    return {
        "source_id": [s.source_id] * n,
        "unit": units.astype(np.int32),
        "max_act": (1 + units * 0.5 + s.layer).astype(np.float32),
        "min_act": np.full(n, -0.5, np.float32),
        "mean_act": np.zeros(n, np.float32),
        "std_act": np.ones(n, np.float32),
        "skew": np.zeros(n, np.float32),
        "kurtosis": np.zeros(n, np.float32),
        "density": ((units + 1) / 10).astype(np.float32),
        "n_tokens": np.full(n, N_SEQ * CTX, np.int64),
        "hist_edges": [[0.0, 1.0]] * n,
        "hist_counts": [[1]] * n,
    }


def _example(rng: np.random.Generator, source_id: str, unit: int, bucket: str, rank: int) -> dict:
    start = int(rng.integers(0, CTX - WINDOW + 1))
    acts = rng.normal(0, 1, WINDOW).astype(np.float32)
    acts[0] = 0.1  # not a float32 in decimal: must round-trip exactly anyway
    return {
        "source_id": source_id,
        "unit": unit,
        "bucket": bucket,
        "rank": rank,
        "seq_id": int(rng.integers(0, N_SEQ)),
        "pos": start + int(rng.integers(0, WINDOW)),
        "start": start,
        "acts": acts.tolist(),
    }


def expected_rows(store: Store, refs: list[UnitRef], buckets: list[str] | None = None) -> list[dict]:
    """What an export of ``refs`` must hold, straight from ``Store.examples``."""
    return [
        {
            "unit": str(ref),
            "source_id": ref.source_id,
            "unit_index": ref.unit,
            "layer": store.source(ref.source_id).layer,
            "bucket": e.bucket,
            "rank": e.rank,
            "seq_id": e.seq_id,
            "pos": e.pos,
            "start": e.start,
            "value": e.value,
            "max_token": e.tokens[e.pos - e.start],
            "text": e.text,
            "tokens": list(e.tokens),
            "acts": list(e.acts),
        }
        for ref in refs
        for e in store.examples(ref, buckets)
    ]


def all_refs(store: Store) -> list[UnitRef]:
    return [UnitRef(s.source_id, u) for s in store.sources() for u in range(s.n_units)]


def records(df: pd.DataFrame) -> list[dict]:
    """Rows as plain Python values (a missing note as None)."""
    rows = [
        {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
        for row in df.to_dict("records")
    ]
    for row in rows:
        if "note" in row and not isinstance(row["note"], str):
            row["note"] = None
    return rows


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    return build_store(tmp_path_factory.mktemp("export") / "store.duckdb")


@pytest.fixture()
def store(store_path):
    with Store(store_path) as s:
        yield s


@pytest.fixture()
def sets(store_path, tmp_path) -> ExampleSets:
    return ExampleSets(tmp_path / "store.sets.duckdb")


# --- the DataFrame and the round trips --------------------------------------------------------
def test_frame_equals_store_examples(store):
    refs = [UnitRef("L0.mlp", 1), UnitRef("L1.mlp", 4), UnitRef("L1.sae.res", 2)]
    df = examples_frame(store, Selection(units=["L0N1", "L1.mlp/4", "L1F2"]))
    assert list(df.columns) == list(ex.ROW_SCHEMA.names)
    assert records(df) == expected_rows(store, refs)
    assert all(isinstance(t, list) for t in df["tokens"]) and all(isinstance(a, list) for a in df["acts"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_example_round_trips(store, tmp_path, fmt):
    out = export(store, Selection(), fmt, tmp_path / f"all.{fmt}")
    assert read_back(out, fmt) == expected_rows(store, all_refs(store))
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def read_back(path: Path, fmt: str) -> list[dict]:
    if fmt == "parquet":
        return pq.read_table(path).to_pylist()
    if fmt == "jsonl":
        with path.open(encoding="utf-8") as f:  # lines end at \n only: text may hold a raw U+2028
            return [json.loads(line) for line in f]
    df = pd.read_csv(path, keep_default_na=False, dtype={"max_token": str, "text": str})
    df["tokens"] = df["tokens"].map(json.loads)
    df["acts"] = df["acts"].map(json.loads)
    return records(df)


def test_duckdb_reads_the_files_back(store, tmp_path):
    sel = Selection(sources=["L1.sae.res"], buckets=["top"])
    want = expected_rows(store, [UnitRef("L1.sae.res", u) for u in range(4)], ["top"])
    for fmt, reader in (("parquet", "read_parquet"), ("jsonl", "read_json")):
        out = export(store, sel, fmt, tmp_path / f"x.{fmt}")
        got = duckdb.sql(f"SELECT * FROM {reader}('{out}')").df()
        assert [r["text"] for r in records(got)] == [r["text"] for r in want]
        assert [list(a) for a in got["acts"]] == [r["acts"] for r in want]


def test_export_bytes_equal_the_file(store, tmp_path):
    sel = Selection(units=["L0N2"])
    assert export_bytes(store, sel, "jsonl") == export(store, sel, "jsonl", tmp_path / "x.jsonl").read_bytes()


def test_streams_in_chunks(store, tmp_path, monkeypatch):
    monkeypatch.setattr(ex, "CHUNK_UNITS", 1)
    out = export(store, Selection(layers=[1]), "parquet", tmp_path / "x.parquet")
    refs = [r for r in all_refs(store) if r.source_id != "L0.mlp"]
    assert pq.read_table(out).to_pylist() == expected_rows(store, refs)
    assert len(ex.resolve(store, Selection(layers=[1])).chunks) == len(refs)


# --- selections -------------------------------------------------------------------------------
def units_of(store, **kw) -> list[str]:
    return [str(r) for r in resolve_units(store, Selection(**kw))]


def test_selection_criteria_narrow(store):
    assert len(units_of(store)) == 16
    assert units_of(store, layers=[1]) == [f"L1.mlp/{u}" for u in range(6)] + [
        f"L1.sae.res/{u}" for u in range(4)
    ]
    assert units_of(store, sources=["L1.sae.res"], units=["L1F3", "L0N1"]) == ["L1.sae.res/3"]
    assert units_of(store, units=["L0.mlp/2", "L0N1", "L0N1"]) == ["L0.mlp/1", "L0.mlp/2"]
    assert units_of(store, sources=["L0.mlp"], ranges=[("density", 0.25, 0.45)]) == ["L0.mlp/2", "L0.mlp/3"]
    assert units_of(store, layers=[0], ranges={"max_act": (None, 2.0)}) == [
        "L0.mlp/0",
        "L0.mlp/1",
        "L0.mlp/2",
    ]
    assert units_of(store, sources=["L1.mlp"], ranges=[("polysemanticity", 0.45, None)]) == ["L1.mlp/5"]
    assert units_of(store, layers=[0], sources=["L1.mlp"]) == []


def test_buckets(store):
    def buckets(*names):
        return list(dict.fromkeys(examples_frame(store, Selection(units=["L0N0"], buckets=names))["bucket"]))

    assert buckets() == ["top", "q0.80", "q0.40", "q0.00", "bottom"]
    assert buckets("bottom", "top") == ["top", "bottom"]
    assert buckets("quantiles") == ["q0.80", "q0.40", "q0.00"]
    assert buckets("q0.4", "Q0.00") == ["q0.40", "q0.00"]
    df = examples_frame(store, Selection(units=["L0N0"], buckets=["top"]))
    assert records(df) == expected_rows(store, [UnitRef("L0.mlp", 0)], ["top"])


@pytest.mark.parametrize(
    ("selection", "message"),
    [
        (Selection(units=["L7N1"]), "no source 'L7.mlp'"),
        (Selection(units=["L0N6"]), "unit 6 is out of range for L0.mlp"),
        (Selection(units=["neuron 3"]), "cannot read unit reference"),
        (Selection(sources=["L0.sae"]), "no source 'L0.sae'"),
        (Selection(layers=[2]), "no layer 2"),
        (Selection(buckets=["middle"]), "no bucket 'middle'"),
        (Selection(ranges=[("entropy", 0, 1)]), "no metric 'entropy'"),
        (Selection(units=[str(DEAD)]), "the selection has no examples"),
        (Selection(layers=[0], sources=["L1.mlp"]), "the selection has no examples"),
        (Selection(ranges=[("density", 2, None)]), "the selection has no examples"),
        (Selection(set_name="nope"), "no set named 'nope'"),
    ],
)
def test_bad_selection_writes_nothing(store, tmp_path, selection, message):
    for fmt in (*FORMATS, "html"):
        with pytest.raises(NeurodashError, match=message):
            export(store, selection, fmt, tmp_path / f"x.{fmt}")
    assert list(tmp_path.iterdir()) == []


# --- output paths -----------------------------------------------------------------------------
def test_existing_output_is_refused_then_replaced(store, tmp_path):
    out = tmp_path / "x.csv"
    out.write_text("precious")
    with pytest.raises(NeurodashError, match="exists: pass --overwrite"):
        export(store, Selection(units=["L0N0"]), None, out)
    assert out.read_text() == "precious"
    export(store, Selection(units=["L0N0"]), None, out, overwrite=True)
    assert read_back(out, "csv") == expected_rows(store, [UnitRef("L0.mlp", 0)])


@pytest.mark.parametrize(
    ("name", "fmt", "message"),
    [
        ("missing/x.csv", None, "folder .*missing does not exist"),
        ("folder", "csv", "is a directory"),
        ("x.txt", None, "cannot tell the format of x.txt"),
        ("x.csv", "xlsx", "unknown format 'xlsx'"),
    ],
)
def test_bad_output(store, tmp_path, name, fmt, message):
    (tmp_path / "folder").mkdir()
    with pytest.raises(NeurodashError, match=message):
        export(store, Selection(units=["L0N0"]), fmt, tmp_path / name)
    assert [p.name for p in tmp_path.iterdir()] == ["folder"]
    assert list((tmp_path / "folder").iterdir()) == []


@pytest.mark.parametrize("fmt", (*FORMATS, "html"))
@pytest.mark.parametrize("error", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_failure_mid_stream_leaves_the_old_file(store, tmp_path, monkeypatch, fmt, error):
    """An error or Ctrl-C after some rows were written: the same exception, the old file intact, no partial."""
    out = tmp_path / f"x.{fmt}"
    out.write_text("old")
    decode, calls = ex._decode, []

    def failing(*args):
        calls.append(1)
        if len(calls) == 3:
            raise error
        return decode(*args)

    monkeypatch.setattr(ex, "CHUNK_UNITS", 1)
    monkeypatch.setattr(ex, "_decode", failing)
    with pytest.raises(type(error)):
        export(store, Selection(), fmt, out, overwrite=True)
    assert out.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


# --- the HTML report (in a browser: test_export_browser.py) -----------------------------------
class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: set[str] = set()
        self.attrs: set[str] = set()
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attrs.update(name for name, _ in attrs)

    def handle_data(self, data):
        self.text.append(data)


def test_html_report_is_inert_markup(store, tmp_path):
    out = export(store, Selection(layers=[0], buckets=["top", "bottom"]), None, tmp_path / "r.html")
    parser = Tags()
    parser.feed(out.read_text(encoding="utf-8"))
    assert parser.tags <= {
        "html",
        "head",
        "meta",
        "title",
        "style",
        "body",
        "h1",
        "h2",
        "p",
        "section",
        "details",
        "summary",
        "div",
        "span",
    }
    assert parser.attrs <= {
        "lang",
        "charset",
        "http-equiv",
        "content",
        "class",
        "id",
        "style",
        "title",
        "open",
    }
    text = "".join(parser.text)
    for token in XSS_TOKENS:
        assert token in text
    assert "test <b>model</b>" in text


def test_html_report_limit(store, tmp_path, monkeypatch):
    monkeypatch.setattr(ex, "HTML_MAX_EXAMPLES", 10)
    with pytest.raises(NeurodashError, match="too many for an HTML report"):
        export(store, Selection(units=["L0N0", "L0N1"]), "html", tmp_path / "r.html")
    export(store, Selection(units=["L0N0"]), "html", tmp_path / "r.html")
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]


# --- curated sets -----------------------------------------------------------------------------
def test_sets_crud(store, sets):
    assert sets.all() == [] and not sets.path.exists()  # reading creates nothing
    sets.create("probing")
    with pytest.raises(NeurodashError, match="exists already"):
        sets.create(" probing ")
    first = sets.add_example(store, "probing", "L0N1", bucket="top", rank=2, note="fires on quotes")
    by_position = store.examples(UnitRef("L1.mlp", 3), ["q0.40"])[1]
    second = sets.add_example(store, "probing", "L1.mlp/3", seq_id=by_position.seq_id, pos=by_position.pos)
    assert (second.seq_id, second.pos) == (by_position.seq_id, by_position.pos)
    assert sets.add_top(store, "paper", "L1F2", note="figure 3") == 3  # a new set
    assert [(s.name, s.n_examples) for s in sets.all()] == [("paper", 3), ("probing", 2)]
    items = records(sets.items("probing"))
    assert [
        (i["source_id"], i["unit"], i["bucket"], i["rank"], i["seq_id"], i["pos"], i["note"]) for i in items
    ] == [
        ("L0.mlp", 1, "top", 2, first.seq_id, first.pos, "fires on quotes"),
        ("L1.mlp", 3, second.bucket, second.rank, second.seq_id, second.pos, None),
    ]

    sets.add("probing", store.examples(UnitRef("L0.mlp", 1), ["top"])[2:])  # again, no note: the note is kept
    sets.add_example(store, "probing", "L1N3", bucket=second.bucket, rank=second.rank, note="new note")
    assert [i["note"] for i in records(sets.items("probing"))] == ["fires on quotes", "new note"]
    sets.remove("probing", "L0N1", "top", 2)
    assert len(sets.items("probing")) == 1

    sets.rename("paper", "paper v2")
    with pytest.raises(NeurodashError, match="exists already"):
        sets.rename("paper v2", "probing")
    sets.delete("probing")
    assert [(s.name, s.n_examples) for s in sets.all()] == [("paper v2", 3)]
    with pytest.raises(NeurodashError, match="no set named 'probing'"):
        sets.items("probing")


def test_sets_bad_input(store, sets):
    with pytest.raises(NeurodashError, match="1 to 200 characters"):
        sets.create("  ")
    with pytest.raises(NeurodashError, match="no example top #7"):
        sets.add_example(store, "s", "L0N1", bucket="top", rank=7)
    with pytest.raises(NeurodashError, match="no top examples"):
        sets.add_top(store, "s", str(DEAD))
    with pytest.raises(ValueError):
        sets.add_example(store, "s", "L0N1", bucket="top")
    with pytest.raises(NeurodashError, match="no set named 's'"):
        sets.delete("s")


def test_sets_file_sits_beside_the_store(store_path):
    assert sets_path(store_path) == store_path.with_name("store.sets.duckdb")
    assert ExampleSets.beside(store_path).path == sets_path(store_path)


def test_export_a_set(store, sets, tmp_path):
    sets.add_top(store, "paper", "L1.mlp/2", note='<b>note</b>, "quoted"')
    sets.add_example(store, "paper", "L0N4", bucket="bottom", rank=1)
    sets.add_example(store, "paper", "L0N0", bucket="q0.00", rank=0, note="first")
    want = [
        {**row, "note": note}
        for row, note in zip(
            expected_rows(store, [UnitRef("L0.mlp", 0)], ["q0.00"])
            + expected_rows(store, [UnitRef("L0.mlp", 4)], ["bottom"])[1:]
            + expected_rows(store, [UnitRef("L1.mlp", 2)], ["top"]),
            ["first", None] + ['<b>note</b>, "quoted"'] * 3,
        )
    ]
    sel = Selection(set_name="paper")
    assert records(examples_frame(store, sel, sets_file=sets.path)) == want
    for fmt in FORMATS:
        got = read_back(export(store, sel, fmt, tmp_path / f"x.{fmt}", sets_file=sets.path), fmt)
        assert [{**r, "note": r["note"] or None} for r in got] == want
    narrowed = examples_frame(
        store, Selection(set_name="paper", layers=[0], buckets=["bottom"]), sets_file=sets.path
    )
    assert records(narrowed) == want[1:2]
    with pytest.raises(NeurodashError, match="no examples"):
        examples_frame(store, Selection(set_name="paper", buckets=["q0.80"]), sets_file=sets.path)


def test_a_set_from_another_store_is_refused(store, sets, tmp_path):
    sets.add_top(store, "paper", "L0N1")
    other = build_store(tmp_path / "other.duckdb", seed=1)
    with Store(other) as s, pytest.raises(NeurodashError, match="3 example.* not in .*rebuilt"):
        export(s, Selection(set_name="paper"), "csv", tmp_path / "x.csv", sets_file=sets.path)
    assert not (tmp_path / "x.csv").exists()


def test_sets_from_many_threads(store, sets):
    examples = [e for u in range(5) for e in store.examples(UnitRef("L1.mlp", u))]
    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(lambda e: sets.add("threads", [e]), examples)) == len(examples)
    assert len(sets.items("threads")) == len(examples)


def test_sets_wait_for_another_process_then_give_up(store, sets, monkeypatch):
    sets.create("s")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, sys, time; c = duckdb.connect({str(sets.path)!r}); "
            "print('open', flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        monkeypatch.setattr("neurodash.storage.sets.BUSY_TIMEOUT_S", 0.5)
        with pytest.raises(NeurodashError, match="is busy: another process has it open"):
            sets.create("t")
    finally:
        holder.kill()
        holder.wait()
    sets.create("t")
    assert [s.name for s in sets.all()] == ["s", "t"]


# --- the command line -------------------------------------------------------------------------
def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["export", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_exports(store_path, store, tmp_path, capsys):
    out = tmp_path / "x.jsonl"
    code, printed, _ = run_cli(
        capsys,
        store_path,
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


def test_cli_ranges(store_path, store, tmp_path, capsys):
    out = tmp_path / "x.data"
    code, _, err = run_cli(
        capsys,
        store_path,
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


def test_cli_exports_a_set(store_path, store, tmp_path, capsys):
    sets = ExampleSets(tmp_path / "my.sets.duckdb")
    sets.add_top(store, "paper", "L0N3")
    out = tmp_path / "x.csv"
    code, _, err = run_cli(capsys, store_path, "--set", "paper", "--sets-file", sets.path, "--out", out)
    assert code == 0, err
    assert len(read_back(out, "csv")) == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--units", "L9N0"], "no source 'L9.mlp'"),
        (["--sources", "L0.sae"], "no source 'L0.sae'"),
        (["--layers", "0-x"], "cannot read layers '0-x'"),
        (["--layers", "1-0"], "names no layer"),
        (["--buckets", "top,middle"], "no bucket 'middle'"),
        (["--range", "skew"], "cannot read range 'skew'"),
        (["--format", "xml"], "unknown format 'xml'"),
        (["--units", str(DEAD)], "the selection has no examples"),
        (["--set", "nope"], "no set named 'nope'"),
    ],
)
def test_cli_bad_input(store_path, tmp_path, capsys, args, message):
    out = tmp_path / "x.csv"
    code, _, err = run_cli(capsys, store_path, *args, "--out", out)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_existing_output(store_path, tmp_path, capsys):
    out = tmp_path / "x.csv"
    out.write_text("precious")
    code, _, err = run_cli(capsys, store_path, "--out", out)
    assert code == 2 and "exists: pass --overwrite" in err and out.read_text() == "precious"
    assert run_cli(capsys, store_path, "--out", out, "--overwrite")[0] == 0
    assert out.read_text() != "precious"


SLOW_EXPORT = """
import sys, time
from neurodash import export
from neurodash.cli import main
decode = export._decode
def slow(*args):
    time.sleep(0.2)
    return decode(*args)
export._decode, export.CHUNK_UNITS = slow, 1
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("fmt", ["parquet", "html"])
@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_export_writes_nothing(store_path, tmp_path, fmt, how):
    out = tmp_path / f"x.{fmt}"
    partial = Path(f"{out}.partial")
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_EXPORT, "export", str(store_path), "--out", str(out)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not partial.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    time.sleep(0.5)  # a few chunks in
    os.kill(proc.pid, how)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted: nothing was written" in err, err
    assert list(tmp_path.iterdir()) == []
