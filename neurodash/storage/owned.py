"""The small DuckDB files the app owns beside a store: curated sets, maximization results.

The analysis store is opened read-only; what the app writes goes to these files instead. Each
call opens its file, does its work in one transaction and closes it, so the dashboard and a CLI
command in another process take turns (DuckDB lets one process at a time open a file for writing).
Each module keeps its own schema and SQL; this one only opens and closes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from neurodash.errors import NeurodashError

_LOCK = threading.Lock()  # one connection at a time in this process


@contextmanager
def transaction(
    path: Path, schema: str, what: str, busy_timeout: float, read_only: bool = False
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to ``path`` in one transaction, committed on success. Threads take turns; a call
    waits up to ``busy_timeout`` seconds while another process has the file. ``what`` names the
    file in errors ("sets file")."""
    with _LOCK:
        con = _open(path, schema, what, busy_timeout, read_only)
        try:
            con.execute("BEGIN")
            yield con
            con.execute("COMMIT")
        finally:
            con.close()


def _open(
    path: Path, schema: str, what: str, busy_timeout: float, read_only: bool
) -> duckdb.DuckDBPyConnection:
    if not path.parent.is_dir():
        raise NeurodashError(f"cannot open {what} {path}: folder {path.parent} does not exist")
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            if not read_only:
                con.execute(schema)
            return con
        except duckdb.IOException as e:
            if "lock" not in str(e).lower():
                raise NeurodashError(f"cannot open {what} {path} ({e})") from None
            if time.monotonic() > deadline:
                raise NeurodashError(f"{what} {path} is busy: another process has it open") from None
            time.sleep(0.1)
        except duckdb.Error as e:
            raise NeurodashError(f"{path} is not a readable {what} ({e})") from None


def version(path: Path) -> tuple:
    """What changes whenever the file's content does: the size and modification time of the file and
    of its write-ahead log (None for one that is not there)."""
    stats = []
    for part in (path, Path(f"{path}.wal")):
        try:
            st = part.stat()
            stats.append((st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            stats.append(None)
    return tuple(stats)


def now() -> datetime:
    """The time as these files keep it: UTC, without a zone."""
    return datetime.now(timezone.utc).replace(tzinfo=None)
