"""The store's writer and reader on real temporary files: every table round trip, the ``.partial``
file renamed into place only on commit, nothing left by an abort, and a store that stays read-only."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from neurodash.errors import NeurodashError
from neurodash.storage import Store, StoreWriter
from neurodash.storage.schema import STORE, UNIT_FRAME_COLUMNS
from neurodash.units import NEURON, SAE_FEATURE, Example, Link, LogitEffect, Source, UnitRef, UnitStats

NEURONS = Source("L0.mlp", "tiny", "blocks.0.mlp.hook_post", NEURON, 0, 2, 64, config={"ctx": 8})
FEATURES = Source("L0.sae", "tiny", "blocks.0.hook_resid_post", SAE_FEATURE, 0, 3, 64, sae="toy-sae")
VOCAB = ["<s>", "a", " b", "c", " d", "\n"]
SEQUENCE = [0, 1, 2, 3, 4, 5, 1, 2]
A, B = UnitRef("L0.mlp", 0), UnitRef("L0.mlp", 1)


def write_every_table(w: StoreWriter) -> None:
    """One or two rows in each table, for units ``A`` and ``B``."""
    w.set_meta(model="tiny", dataset="toy", n_tokens=64, ctx=8)
    w.add_source(NEURONS)
    w.add_source(FEATURES)
    w.append("vocab", {"model": ["tiny"] * len(VOCAB), "token_id": list(range(len(VOCAB))), "token": VOCAB})
    w.append("sequences", {"seq_id": [7], "doc_id": [3], "start": [0], "token_ids": [SEQUENCE]})
    w.append(
        "units",
        {
            "source_id": ["L0.mlp", "L0.mlp"],
            "unit": [0, 1],
            "max_act": np.array([2.5, 1.0], np.float32),
            "min_act": np.array([-0.5, -1.0], np.float32),
            "mean_act": np.array([0.25, 0.0], np.float32),
            "std_act": np.array([0.5, 0.75], np.float32),
            "skew": np.array([1.5, 0.0], np.float32),
            "kurtosis": np.array([3.0, 2.0], np.float32),
            "density": np.array([0.125, 0.5], np.float32),
            "n_tokens": [64, 64],
            "hist_edges": np.array([[-0.5, 1.0, 2.5], [-1.0, 0.0, 1.0]], np.float32),  # 2-D: one row per unit
            "hist_counts": [[60, 4], [32, 32]],
        },
    )
    w.append(
        "examples",
        {
            "source_id": ["L0.mlp"] * 2,
            "unit": [0, 0],
            "bucket": ["top", "bottom"],
            "rank": [0, 0],
            "seq_id": [7, 7],
            "pos": [3, 1],
            "start": [1, 0],
            "acts": [[0.0, 0.5, 2.5, 0.25], [0.0, -0.5, 0.0]],
        },
    )
    w.append(
        "logits",
        {
            "source_id": ["L0.mlp"] * 2,
            "unit": [0, 0],
            "sign": ["+", "-"],
            "rank": [0, 0],
            "token_id": [2, 4],
            "value": np.array([1.5, -0.75], np.float32),
        },
    )
    w.append(
        "neighbors",
        {"source_id": ["L0.mlp"], "unit": [0], "rank": [0], "neighbor": [1], "cosine": np.float32([0.5])},
    )
    w.append(
        "scores", {"source_id": ["L0.mlp"] * 2, "unit": [0, 1], "metric": ["poly"] * 2, "value": [0.25, 0.75]}
    )
    w.append(
        "links",
        pa.table(  # an Arrow table goes in as it is
            {
                "source_id": ["L0.mlp"],
                "unit": pa.array([0], pa.int32()),
                "rank": pa.array([0], pa.int32()),
                "target_source_id": ["L0.sae"],
                "target_unit": pa.array([2], pa.int32()),
                "weight": pa.array([0.5], pa.float32()),
                "share": pa.array([0.25], pa.float32()),
            }
        ),
    )
    w.append("clusters", {"source_id": ["L0.mlp"], "unit": [0], "seq_id": [7], "pos": [3], "cluster": [1]})


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "s.duckdb"
    with StoreWriter(path) as w:
        write_every_table(w)
        w.commit()
    return path


def test_every_table_round_trips(store_path):
    with Store(store_path) as store:
        assert store.meta == {
            "schema_version": str(STORE.version),
            "model": "tiny",
            "dataset": "toy",
            "n_tokens": "64",
            "ctx": "8",
        }
        assert store.sources() == [NEURONS, FEATURES]
        assert store.source("L0.mlp").config == {"ctx": 8}
        assert store.source("L0.sae").sae == "toy-sae"
        assert store.vocab == VOCAB
        assert store.sequence(7) == tuple(SEQUENCE)
        assert store.unit_stats(A) == UnitStats(
            A, 2.5, -0.5, 0.25, 0.5, 1.5, 3.0, 0.125, 64, (-0.5, 1.0, 2.5), (60, 4)
        )
        assert store.examples(A) == [
            Example(A, "top", 0, 7, 3, 1, ("a", " b", "c", " d"), (1, 2, 3, 4), (0.0, 0.5, 2.5, 0.25)),
            Example(A, "bottom", 0, 7, 1, 0, ("<s>", "a", " b"), (0, 1, 2), (0.0, -0.5, 0.0)),
        ]
        assert store.strongest_examples([A, B]) == {A: store.examples(A)[0]}
        assert store.logit_effects(A) == [
            LogitEffect("+", 0, 2, " b", 1.5),
            LogitEffect("-", 0, 4, " d", -0.75),
        ]
        assert store.neighbors(A) == [(B, 0.5)]
        assert store.scores(B) == {"poly": 0.75}
        assert store.links(A) == [Link(UnitRef("L0.sae", 2), 0.5, 0.25)]
        assert store.clusters(A) == {(7, 3): 1}
        assert store.bucket_names == ["top", "bottom"]
        frame = store.units_frame()
        assert list(frame.columns) == [*UNIT_FRAME_COLUMNS, "poly"]
        assert frame[["unit", "density", "poly"]].to_dict("list") == {
            "unit": [0, 1],
            "density": [0.125, 0.5],
            "poly": [0.25, 0.75],
        }


def test_a_store_without_the_newer_tables_reads_them_empty(store_path):
    with duckdb.connect(str(store_path)) as con:
        for table in STORE.optional_tables:
            con.execute(f"DROP TABLE {table}")
    with Store(store_path) as store:
        assert store.links(A) == [] and store.clusters(A) == {}
        assert store.unit_stats(A).max_act == 2.5


def test_the_store_appears_only_on_commit(tmp_path):
    path = tmp_path / "s.duckdb"
    with StoreWriter(path) as w:
        write_every_table(w)
        assert w.partial == tmp_path / "s.duckdb.partial" and w.partial.is_file()
        assert not path.exists()
        assert w.commit() == path
    assert path.is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["s.duckdb"]


def test_an_abort_leaves_nothing(tmp_path):
    path = tmp_path / "s.duckdb"
    with pytest.raises(RuntimeError, match="killed"), StoreWriter(path) as w:
        write_every_table(w)
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_an_aborted_rewrite_keeps_the_old_store(store_path):
    before = store_path.read_bytes()
    with StoreWriter(store_path, overwrite=True) as w:
        w.set_meta(model="other")
        w.abort()
    assert store_path.read_bytes() == before
    assert sorted(p.name for p in store_path.parent.iterdir()) == [store_path.name]


def test_a_killed_runs_leftovers_are_replaced(store_path):
    partial = store_path.with_name(store_path.name + ".partial")
    partial.write_bytes(b"half a store")
    partial.with_name(partial.name + ".wal").write_bytes(b"its log")
    with StoreWriter(store_path, overwrite=True) as w:
        write_every_table(w)
        w.commit()
    assert sorted(p.name for p in store_path.parent.iterdir()) == [store_path.name]
    with Store(store_path) as store:
        assert store.vocab == VOCAB


def test_an_existing_store_needs_overwrite(store_path):
    with pytest.raises(NeurodashError, match="exists: pass --overwrite"):
        StoreWriter(store_path)


def test_a_failed_insert_on_the_writer_thread_is_raised_and_leaves_nothing(tmp_path):
    """Inserts run on the writer's thread: one that fails (here a unit id DuckDB cannot hold in its
    INTEGER column) is raised by a later call, ``commit`` at the latest, and the partial file goes."""
    path = tmp_path / "s.duckdb"
    with pytest.raises(duckdb.ConversionException), StoreWriter(path) as w:
        write_every_table(w)
        row = {
            "source_id": ["L0.mlp"],
            "unit": np.array([2**40]),
            "sign": ["+"],
            "rank": [0],
            "token_id": [2],
        }
        w.append("logits", {**row, "value": np.array([1.5], np.float32)})
        w.commit()
    assert list(tmp_path.iterdir()) == []


def test_the_writer_thread_keeps_the_order_of_statements(tmp_path):
    path = tmp_path / "s.duckdb"
    with StoreWriter(path) as w:
        write_every_table(w)
        for i in range(20):  # more than the queue holds: the caller waits, the order stays
            w.set_meta(counter=i)
        w.commit()
    with duckdb.connect(str(path), read_only=True) as con:
        values = [int(v) for (v,) in con.execute("SELECT value FROM meta WHERE key = 'counter'").fetchall()]
    assert values == list(range(20))


def test_appends_are_inserted_in_whole_row_groups_in_their_order(tmp_path, monkeypatch):
    """A table's appends wait until they fill a row group (``_ROW_GROUP`` rows), then go in as the
    whole groups they fill, the rest at ``flush``: every row arrives, in the order appended, whatever
    its columns' integer widths."""
    from neurodash.storage import writer

    monkeypatch.setattr(writer, "_ROW_GROUP", 5)
    inserted: list[int] = []  # the rows of each insert queued (on the caller's thread, in order)
    submit = StoreWriter._submit

    def record(self, fn, *args):
        if args[:1] == ("scores",):
            inserted.append(sum(part.num_rows for part in args[1:]))
        submit(self, fn, *args)

    monkeypatch.setattr(StoreWriter, "_submit", record)
    path = tmp_path / "s.duckdb"
    with StoreWriter(path) as w:
        for start in range(0, 12, 2):  # appends of two rows, their unit ids int32 or int64 in turn
            ids = np.arange(start, start + 2, dtype=np.int32 if start % 4 else np.int64)
            w.append(
                "scores", {"source_id": ["L0.mlp"] * 2, "unit": ids, "metric": ["m"] * 2, "value": ids * 0.5}
            )
        assert inserted == [5, 5]
        w.append("scores", {"source_id": ["L0.mlp"], "unit": np.array([12]), "metric": ["m"], "value": [6.0]})
        w.flush(wait=False)  # queued, not waited for
        w.flush()  # nothing pending: no insert
        assert inserted == [5, 5, 3]
        w.commit()
    with duckdb.connect(str(path), read_only=True) as con:
        rows = con.execute("SELECT unit, value FROM scores").fetchall()
    assert rows == [(u, u * 0.5) for u in range(13)]


def test_whole_row_groups_bypass_the_log(tmp_path):
    """DuckDB writes an insert's whole row groups straight into the file: what ``_ROW_GROUP`` counts
    on (a DuckDB with other row groups would log them, and check them again at commit)."""
    from neurodash.storage.writer import _ROW_GROUP

    path = tmp_path / "s.duckdb"
    n = 2 * _ROW_GROUP + 7
    with StoreWriter(path) as w:
        for part in np.array_split(np.arange(n), 3):
            w.append(
                "scores",
                {
                    "source_id": ["L0.mlp"] * len(part),
                    "unit": part,
                    "metric": ["m"] * len(part),
                    "value": part * 0.5,
                },
            )
        w.flush()
        log = w.partial.with_name(w.partial.name + ".wal")
        assert log.stat().st_size < 64 << 10  # ~8 MB of rows went in, a few kB were logged
        w.commit()
    with duckdb.connect(str(path), read_only=True) as con:
        units = [u for (u,) in con.execute("SELECT unit FROM scores").fetchall()]
        groups = "SELECT sum(count) FROM pragma_storage_info('scores') WHERE column_path = '[1]' GROUP BY row_group_id"
        sizes = sorted(int(size) for (size,) in con.execute(groups).fetchall())
    assert units == list(range(n))
    assert sizes == [7, _ROW_GROUP, _ROW_GROUP]  # whole groups, none rewritten at the commit


def test_unknown_table(tmp_path):
    with StoreWriter(tmp_path / "s.duckdb") as w, pytest.raises(ValueError, match="unknown table"):
        w.append("intruder", {"a": [1]})


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE intruder (a INTEGER)",
        "INSERT INTO meta VALUES ('k', 'v')",
        "DELETE FROM units",
        "DROP TABLE scores",
    ],
)
def test_the_store_is_read_only(store_path, statement):
    before = store_path.read_bytes()
    with Store(store_path) as store, pytest.raises(duckdb.Error, match="read-only"):
        store.sql(statement)
    assert store_path.read_bytes() == before
    assert sorted(p.name for p in store_path.parent.iterdir()) == [store_path.name]


def test_unknown_units_and_sources(store_path):
    with Store(store_path) as store:
        with pytest.raises(NeurodashError, match="no unit L0.mlp/5"):
            store.unit_stats(UnitRef("L0.mlp", 5))
        with pytest.raises(NeurodashError, match="no source 'L9.mlp'"):
            store.source("L9.mlp")
        with pytest.raises(NeurodashError, match="no sequence 99"):
            store.sequence(99)
        assert store.has_unit(B) and not store.has_unit(UnitRef("L0.mlp", 2))
        assert store.examples(B) == [] and store.logit_effects(B) == []


def test_release_cache_hands_back_blocks_and_keeps_the_limit(store_path):
    """The idle server's release (app/server.py): the memory limit comes back as it was, reads go on."""
    with Store(store_path) as store:
        limit = store.sql("SELECT current_setting('memory_limit')").fetchall()
        store.units_frame()
        store.release_cache()
        assert store.sql("SELECT current_setting('memory_limit')").fetchall() == limit
        assert len(store.units_frame()) > 0


@pytest.mark.parametrize(
    "values",
    [
        [np.array([1.5, 2.0], np.float32), np.array([], np.float32), np.array([3.0], np.float32)],
        [np.array([1, 2]), np.array([5])],
        ["L0.mlp"] * 5,
        ["é"] * 3,
        [""] * 2,
        ["a", "b", "a"],
        ["a", None],
        [None, "a"],
        [np.array([1.0]), None],
        [1, 2, 3],
        [],
        np.arange(4),
    ],
)
def test_arrow_columns_equal_arrows_own_conversion(values):
    from neurodash.storage.writer import _arrow_column

    assert _arrow_column(values).equals(pa.array(values))


def test_wide_rows_go_in_before_a_whole_group_and_mismatched_columns_are_refused(tmp_path, monkeypatch):
    """Appends that hold ``_PENDING_BYTES`` go in before they fill a row group (long windows' token
    ids would hold GBs); an append whose columns differ from the table's pending ones is refused."""
    from neurodash.storage import writer

    monkeypatch.setattr(writer, "_PENDING_BYTES", 3000)
    with StoreWriter(tmp_path / "s.duckdb") as w:
        row = {"seq_id": np.arange(2), "doc_id": np.arange(2), "start": np.zeros(2, np.int32)}
        w.append("sequences", {**row, "token_ids": np.ones((2, 100), np.int32)})  # 800 bytes of ids
        assert "sequences" in w._pending
        w.append("sequences", {**row, "token_ids": np.ones((2, 400), np.int32)})
        assert "sequences" not in w._pending  # sent, far below a row group
        w.append("scores", {"source_id": ["L0.mlp"], "unit": [0], "metric": ["m"], "value": [1.0]})
        with pytest.raises(ValueError, match="scores: columns"):
            w.append("scores", {"source_id": ["L0.mlp"], "unit": [1], "value": [1.0]})
        w.commit()
