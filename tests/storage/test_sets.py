"""Curated sets (neurodash/storage/sets.py): create, add, note, remove, rename, delete; bad input;
the file beside the store; many threads; another process holding the file."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from small_store import DEAD, records

from neurodash.errors import NeurodashError
from neurodash.storage import Store
from neurodash.storage.sets import ExampleSets, sets_path
from neurodash.units import UnitRef


@pytest.fixture()
def store(small_store):
    with Store(small_store) as s:
        yield s


@pytest.fixture()
def sets(tmp_path) -> ExampleSets:
    return ExampleSets(tmp_path / "store.sets.duckdb")


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


def test_sets_file_sits_beside_the_store(small_store):
    assert sets_path(small_store) == small_store.with_name("store.sets.duckdb")
    assert ExampleSets.beside(small_store).path == sets_path(small_store)


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
            f"import duckdb, sys; c = duckdb.connect({str(sets.path)!r}); "
            "print('open', flush=True); sys.stdin.read()",  # holds the file until its stdin closes
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        monkeypatch.setattr(ExampleSets, "busy_timeout", 0.5)
        with pytest.raises(NeurodashError, match="is busy: another process has it open"):
            sets.create("t")
    finally:
        holder.kill()
        holder.wait()
    sets.create("t")
    assert [s.name for s in sets.all()] == ["s", "t"]
