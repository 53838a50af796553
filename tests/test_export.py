"""Export (neurodash/export.py): selections, every format read back against the store, curated sets
as a selection, bad input and output paths, failures mid-stream. The store: ``small_store.py``."""

from __future__ import annotations

import duckdb
import pyarrow.parquet as pq
import pytest
from small_store import DEAD, FORMATS, all_refs, expected_rows, make_small_store, read_back, records

from neurodash import export as ex
from neurodash.errors import NeurodashError
from neurodash.export import Selection, examples_frame, export, export_bytes, resolve_units
from neurodash.storage import Store
from neurodash.storage.sets import ExampleSets
from neurodash.units import UnitRef


@pytest.fixture()
def store(small_store):
    with Store(small_store) as s:
        yield s


@pytest.fixture()
def sets(tmp_path) -> ExampleSets:
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


# --- a curated set as the selection ---------------------------------------------------------
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
    other = make_small_store(tmp_path / "other.duckdb", seed=1)
    with Store(other) as s, pytest.raises(NeurodashError, match="3 example.* not in .*rebuilt"):
        export(s, Selection(set_name="paper"), "csv", tmp_path / "x.csv", sets_file=sets.path)
    assert not (tmp_path / "x.csv").exists()
