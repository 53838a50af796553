"""The small DuckDB files the app owns beside a store: curated sets, maximization results.

The analysis store is opened read-only; what the app writes goes to these files instead. Each
call opens its file, does its work in one transaction and closes it, so the dashboard and a CLI
command in another process take turns (DuckDB lets one process at a time open a file for writing).
Each kind's DDL is in ``schema``, its queries in its own module (``sets``, ``maximize``, ``lab``,
``explanations``, ``embeddings``), a subclass of ``OwnedFile``; this one opens, checks and closes.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import ClassVar, TypeVar

import duckdb

from neurodash import paths
from neurodash.errors import NeurodashError
from neurodash.storage.connect import connect, first_line, is_damage, open_checked
from neurodash.storage.schema import FileSchema

_LOCK = threading.Lock()  # one connection at a time in this process
BUSY_TIMEOUT_S = 10.0  # how long a call waits while another process has the file
F = TypeVar("F", bound="OwnedFile")


class OwnedFile:
    """One app-owned file at ``path``: a subclass names its ``kind`` (``demo.duckdb`` ->
    ``demo.<kind>.duckdb`` beside the store) and its ``schema``, and queries it in ``_connect``."""

    kind: ClassVar[str]
    schema: ClassVar[FileSchema]
    busy_timeout: ClassVar[float] = BUSY_TIMEOUT_S

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @classmethod
    def beside(cls: type[F], store_path: str | os.PathLike, path: str | os.PathLike | None = None) -> F:
        """The file ``path``, or by default the one of this kind beside the store."""
        return cls(path if path is not None else paths.beside(store_path, cls.kind))

    def check(self: F) -> F:
        """Refuse, with one line, a file that is not of this kind (before serving it, say), or whose
        folder is missing; return self."""
        check(self.path, self.schema, self.busy_timeout)
        return self

    def _connect(self, read_only: bool = False) -> AbstractContextManager[duckdb.DuckDBPyConnection]:
        """A connection in one transaction, committed on success. Threads take turns; a call waits
        while another process has the file."""
        return transaction(self.path, self.schema, self.busy_timeout, read_only)


@contextmanager
def transaction(
    path: Path, schema: FileSchema, busy_timeout: float, read_only: bool = False
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to ``path`` in one transaction, committed on success. Threads take turns; a call
    waits up to ``busy_timeout`` seconds while another process has the file. A writing connection
    creates the file, or what is missing of its schema."""
    with _LOCK:
        con = _open(path, schema, busy_timeout, read_only)
        try:
            con.execute("BEGIN")
            yield con
            con.execute("COMMIT")
        except duckdb.Error as e:
            if not is_damage(e):
                raise
            raise NeurodashError(
                f"{schema.what} {path} is damaged ({first_line(e)}): restore it from a copy, or move it aside to start a new one"
            ) from None
        finally:
            con.close()


def check(path: Path, schema: FileSchema, busy_timeout: float) -> None:
    """Refuse, with one line, a file that is not of this kind, or a folder that does not exist. A
    file not made yet is fine, and so is an empty DuckDB database (the first write fills it in)."""
    _check_folder(path, schema)
    if path.exists():
        with _LOCK:
            _open(path, schema, busy_timeout, read_only=True, may_be_empty=True).close()


def _check_folder(path: Path, schema: FileSchema) -> None:
    if not path.parent.is_dir():
        raise NeurodashError(f"cannot open {schema.what} {path}: folder {path.parent} does not exist")


def _open(
    path: Path, schema: FileSchema, busy_timeout: float, read_only: bool, may_be_empty: bool = False
) -> duckdb.DuckDBPyConnection:
    _check_folder(path, schema)
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            return _connect(path, schema, read_only, may_be_empty or not read_only)
        except duckdb.IOException as e:
            if "lock" not in str(e).lower():
                raise NeurodashError(f"cannot open {schema.what} {path} ({first_line(e)})") from None
            if time.monotonic() > deadline:
                raise NeurodashError(f"{schema.what} {path} is busy: another process has it open") from None
            time.sleep(0.1)
        except duckdb.Error as e:
            raise NeurodashError(f"cannot open {schema.what} {path} ({first_line(e)})") from None


def _connect(
    path: Path, schema: FileSchema, read_only: bool, may_be_empty: bool
) -> duckdb.DuckDBPyConnection:
    """A checked connection to the file; a writing one to a file not made yet makes it."""
    if path.exists() or read_only:
        con, _ = open_checked(path, schema, read_only=read_only, may_be_empty=may_be_empty)
    else:
        con = connect(path)
    if not read_only:
        try:
            con.execute(schema.ddl)
            con.execute(
                "INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT DO NOTHING", [str(schema.version)]
            )
        except BaseException:
            con.close()
            raise
    return con


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
