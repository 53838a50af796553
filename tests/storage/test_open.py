"""Opening a file stays offline and inert, and a file of the wrong kind gets one line (issue #16, 1).

Every bad file is refused as a store, a sets file and a results file, through the library and
through the CLI (``info``, ``export``, ``serve``: one line, exit status 2).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from synthetic import make_synthetic_store

from neurodash.errors import NeurodashError
from neurodash.export import Selection, export
from neurodash.storage import Store
from neurodash.storage.connect import connect, connect_for_copy
from neurodash.storage.maximize import MaximizeResults
from neurodash.storage.schema import SETS
from neurodash.storage.sets import ExampleSets

ROOT = Path(__file__).resolve().parents[2]
BLOCK = 262_144  # DuckDB's block size
HEADERS = 3 * 4096


@pytest.fixture(scope="module")
def good_store(tmp_path_factory) -> Path:
    return make_synthetic_store(tmp_path_factory.mktemp("good") / "good.duckdb", 2, 40, n_sequences=256)


def _sqlite(path: Path, good: Path) -> None:
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE units (unit INTEGER)")


def _parquet(path: Path, good: Path) -> None:
    pq.write_table(pa.table({"unit": [1, 2]}), path)


def _empty(path: Path, good: Path) -> None:
    path.write_bytes(b"")


def _directory(path: Path, good: Path) -> None:
    path.mkdir()


def _text(path: Path, good: Path) -> None:
    path.write_text("not a database at all\n" * 100)


def _cut_mid_block(path: Path, good: Path) -> None:
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _cut_at_a_block(path: Path, good: Path) -> None:  # whole blocks, the last ones missing
    data = good.read_bytes()
    path.write_bytes(data[: HEADERS + ((len(data) - HEADERS) // BLOCK - 1) * BLOCK])


def _version_999(path: Path, good: Path) -> None:
    shutil.copy(good, path)
    with duckdb.connect(str(path)) as con:
        con.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")


def _other_tables(path: Path, good: Path) -> None:
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE customers (name VARCHAR)")


# (name, make the file, what the line says it is: as a store, as a sets or results file)
BAD_FILES: list[tuple[str, Callable[[Path, Path], None], str, str]] = [
    ("sqlite", _sqlite, "it is a SQLite database", "it is a SQLite database"),
    ("parquet", _parquet, "it is a Parquet file", "it is a Parquet file"),
    ("empty", _empty, "it is an empty file", "it is an empty file"),
    ("directory", _directory, "it is a directory", "it is a directory"),
    ("text", _text, "it is a text file", "it is a text file"),
    ("cut-mid-block", _cut_mid_block, "it is a DuckDB file cut short", "it is a DuckDB file cut short"),
    ("cut-at-a-block", _cut_at_a_block, "it is a DuckDB file cut short", "it is a DuckDB file cut short"),
    (
        "version-999",
        _version_999,
        "of schema version 999, and this neurodash reads version 1",
        "a neurodash store",
    ),
    ("other-tables", _other_tables, "a DuckDB database with tables customers", "with tables customers"),
]
IDS = [row[0] for row in BAD_FILES]


def bad_file(tmp_path: Path, good: Path, make: Callable[[Path, Path], None]) -> Path:
    path = tmp_path / "bad.duckdb"
    make(path, good)
    return path


def assert_one_line(error: BaseException | str, *phrases: str) -> None:
    text = str(error)
    assert len(text.strip().splitlines()) == 1, text
    for phrase in phrases:
        assert phrase in text, text


@pytest.mark.parametrize(("name", "make", "as_store", "as_owned"), BAD_FILES, ids=IDS)
def test_a_bad_file_is_refused_as_a_store(tmp_path, good_store, name, make, as_store, as_owned):
    path = bad_file(tmp_path, good_store, make)
    started = time.monotonic()
    with pytest.raises(NeurodashError) as refused:
        Store(path)
    assert time.monotonic() - started < 5
    assert_one_line(refused.value, str(path), as_store)


@pytest.mark.parametrize(("name", "make", "as_store", "as_owned"), BAD_FILES, ids=IDS)
def test_a_bad_file_is_refused_as_a_sets_or_results_file(
    tmp_path, good_store, name, make, as_store, as_owned
):
    path = bad_file(tmp_path, good_store, make)
    before = sorted(tmp_path.iterdir())
    for what, calls in (
        (
            "sets file",
            [ExampleSets(path).check, ExampleSets(path).all, lambda: ExampleSets(path).create("a")],
        ),
        ("results file", [MaximizeResults(path).check, MaximizeResults(path).all]),
    ):
        for call in calls:
            with pytest.raises(NeurodashError) as refused:
                call()
            assert_one_line(refused.value, str(path), what, as_owned)
    assert sorted(tmp_path.iterdir()) == before  # nothing made or changed beside it


def test_a_store_is_refused_as_a_sets_file_and_the_other_way(tmp_path, good_store):
    sets = ExampleSets(tmp_path / "s.sets.duckdb")
    sets.create("kept")
    with pytest.raises(NeurodashError) as refused:
        Store(sets.path)
    assert_one_line(refused.value, "is not a readable neurodash store: it is a neurodash sets file")
    with pytest.raises(NeurodashError) as refused:
        ExampleSets(good_store).check()
    assert_one_line(refused.value, "is not a readable neurodash sets file: it is a neurodash store")
    with pytest.raises(NeurodashError) as refused:
        MaximizeResults(sets.path).check()
    assert_one_line(refused.value, "is not a readable neurodash results file: it is a neurodash sets file")


def test_a_sets_file_of_another_version_is_refused_and_an_old_one_read(tmp_path):
    sets = ExampleSets(tmp_path / "s.sets.duckdb")
    sets.create("kept")
    with duckdb.connect(str(sets.path)) as con:
        assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall() == [
            (str(SETS.version),)
        ]
        con.execute("DROP TABLE meta")  # a file from before versions: read as version 1
    assert [s.name for s in sets.check().all()] == ["kept"]
    with duckdb.connect(str(sets.path)) as con:
        con.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    with pytest.raises(NeurodashError) as refused:
        sets.all()
    assert_one_line(
        refused.value, "is a neurodash sets file of schema version 2, and this neurodash reads version 1"
    )


def test_a_new_or_empty_database_is_a_fine_sets_file(tmp_path):
    assert ExampleSets(tmp_path / "new.duckdb").check().all() == []
    assert not (tmp_path / "new.duckdb").exists()
    duckdb.connect(str(tmp_path / "empty.duckdb")).close()
    sets = ExampleSets(tmp_path / "empty.duckdb").check()
    sets.create("a")
    assert [s.name for s in sets.all()] == ["a"]
    with pytest.raises(NeurodashError, match="folder .* does not exist"):
        ExampleSets(tmp_path / "nowhere" / "s.duckdb").check()


# --- the CLI ------------------------------------------------------------------------------------
def neurodash(*args: str | Path, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(home), "NEURODASH_HOME": str(home / "nd")}
    return subprocess.run(
        [sys.executable, "-m", "neurodash", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(("name", "make", "as_store", "as_owned"), BAD_FILES, ids=IDS)
def test_cli_one_line_and_status_2(tmp_path, good_store, name, make, as_store, as_owned):
    path = bad_file(tmp_path, good_store, make)
    out = tmp_path / "out.csv"
    home = tmp_path / "home"
    for args, says in (
        (["info", path], as_store),
        (["export", path, "--units", "L0N1", "--out", out], as_store),
        (["serve", path, "--port", "9"], as_store),
        (["serve", good_store, "--sets-file", path, "--port", "9"], as_owned),
        (["export", good_store, "--set", "a", "--sets-file", path, "--out", out], as_owned),
    ):
        if name == "directory" and args[0] == "serve" and "--sets-file" in args:
            says = "it is a folder"  # the app's own check of --sets-file comes first
        done = neurodash(*args, home=home)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.startswith("error: "), (args, done.stderr)
        assert_one_line(done.stderr, says)
        assert done.stdout == ""
    assert not out.exists()
    assert not (home / ".duckdb").exists()  # no extension was installed


# --- offline and inert --------------------------------------------------------------------------
def test_a_store_connection_is_offline_for_good(tmp_path, good_store):
    with Store(good_store) as store:
        settings = store.sql(
            "SELECT current_setting('autoinstall_known_extensions'), current_setting('autoload_known_extensions'), "
            "current_setting('enable_external_access')"
        ).fetchall()
        assert settings == [(False, False, False)]
        with pytest.raises(duckdb.Error, match="Cannot enable external access"):
            store.sql("SET enable_external_access = true")
        store.sql("SET autoinstall_known_extensions = true")  # even so, nothing can be installed or read
        for query in (
            "SELECT * FROM read_text('/etc/hostname')",
            "SELECT * FROM read_csv('https://example.com/x.csv')",
            f"ATTACH '{tmp_path / 'other.duckdb'}' AS other",
            "INSTALL httpfs",
            "LOAD httpfs",
        ):
            with pytest.raises(duckdb.Error, match="disabled|Cannot access"):
                store.sql(query)


def test_a_view_in_a_store_cannot_read_files(tmp_path, good_store):
    path = tmp_path / "leaky.duckdb"
    shutil.copy(good_store, path)
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE VIEW leak AS SELECT * FROM read_text('/etc/hostname')")
    with Store(path) as store, pytest.raises(duckdb.Error, match="disabled"):
        store.sql("SELECT * FROM leak")


def test_sqlite_is_refused_quickly_and_installs_nothing(tmp_path, good_store):
    """Even handed straight to DuckDB (the first-bytes check skipped), a SQLite file loads no
    extension: it fails at once, without a download (with DuckDB's defaults it would fetch
    ``sqlite_scanner``)."""
    home = tmp_path / "home"
    home.mkdir()
    _sqlite(tmp_path / "x.sqlite", good_store)
    script = textwrap.dedent(
        f"""
        import time, duckdb
        from pathlib import Path
        from neurodash.errors import NeurodashError
        from neurodash.storage import Store
        from neurodash.storage.connect import connect
        started = time.monotonic()
        try:
            Store({str(tmp_path / "x.sqlite")!r})
        except NeurodashError as e:
            print("store:", e)
        try:
            connect(Path({str(tmp_path / "x.sqlite")!r}), read_only=True)
        except duckdb.Error as e:
            print("duckdb:", str(e).splitlines()[0])
        print("seconds:", time.monotonic() - started)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(": ", 1) for line in done.stdout.strip().splitlines())
    assert "it is a SQLite database" in lines["store"]
    assert "Loading external extensions is disabled" in lines["duckdb"]
    assert float(lines["seconds"]) < 5
    assert list(home.iterdir()) == []  # no ~/.duckdb/extensions


def test_the_copy_connection_writes_its_one_file_only(tmp_path):
    out = tmp_path / "out.csv"
    con = connect_for_copy(out)
    try:
        con.execute(f"COPY (SELECT 1 AS a) TO '{out}' (FORMAT CSV, HEADER)")
        assert out.read_text() == "a\n1\n"
        for query in (
            f"COPY (SELECT 1 AS a) TO '{tmp_path / 'other.csv'}' (FORMAT CSV)",
            "SELECT * FROM read_text('/etc/hostname')",
            "SET enable_external_access = true",
        ):
            with pytest.raises(duckdb.Error):
                con.execute(query)
    finally:
        con.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_export_to_a_relative_path(tmp_path, good_store, monkeypatch, fmt):
    monkeypatch.chdir(tmp_path)
    with Store(good_store) as store:
        assert export(store, Selection(units=["L0N1"]), None, f"out.{fmt}") == Path(f"out.{fmt}")
    assert (tmp_path / f"out.{fmt}").stat().st_size > 0


def test_the_writer_connection_is_offline_too(tmp_path):
    path = tmp_path / "w.duckdb"
    con = connect(path)
    try:
        assert con.execute("SELECT current_setting('enable_external_access')").fetchall() == [(False,)]
        con.register("_incoming", pa.table({"a": [1, 2]}))  # Arrow goes in with external access off
        assert con.execute("SELECT sum(a) FROM _incoming").fetchall() == [(3,)]
    finally:
        con.close()
