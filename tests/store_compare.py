"""Row-for-row comparison of two stores: SQL ``EXCEPT ALL`` in both directions on every table.

What is about the run rather than its results is left out: each source's ``created_at``, and the
store's ``phase_seconds`` (wall times).
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from neurodash.storage.schema import STORE

_COLUMNS = {"sources": "* EXCLUDE (created_at)"}
_WHERE = {"meta": "WHERE key <> 'phase_seconds'"}


def differing_rows(a: Path, b: Path) -> dict[str, tuple[int, int]]:
    """Per table that differs: (rows only in a, rows only in b)."""
    con = duckdb.connect()
    con.execute(f"ATTACH '{a}' AS a (READ_ONLY)")
    con.execute(f"ATTACH '{b}' AS b (READ_ONLY)")
    out = {}
    for table in (*STORE.tables, *STORE.optional_tables):

        def rows(db: str, table: str = table) -> str:
            return f"SELECT {_COLUMNS.get(table, '*')} FROM {db}.{table} {_WHERE.get(table, '')}"

        only_a = con.execute(f"SELECT count(*) FROM ({rows('a')} EXCEPT ALL {rows('b')})").fetchone()
        only_b = con.execute(f"SELECT count(*) FROM ({rows('b')} EXCEPT ALL {rows('a')})").fetchone()
        assert only_a is not None and only_b is not None
        if only_a[0] or only_b[0]:
            out[table] = (only_a[0], only_b[0])
    con.close()
    return out


def table_rows(path: Path) -> dict[str, int]:
    con = duckdb.connect(str(path), read_only=True)
    counts = {}
    for t in (*STORE.tables, *STORE.optional_tables):
        row = con.execute(f"SELECT count(*) FROM {t}").fetchone()
        counts[t] = row[0] if row else 0
    con.close()
    return counts
