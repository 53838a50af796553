"""``StoreWriter`` builds a new store in a ``.partial`` file and renames it into place only when
everything is written, so an interrupted run never leaves a half-written store behind or damages
an existing one.

A run that is killed (``kill -9``, a power cut) leaves its ``OUT.partial`` (and ``OUT.partial.wal``).
The next ``StoreWriter`` to the same path removes them, and ``remove_leftovers`` those of any store
in a folder; neither touches a partial store that a live process is still writing (DuckDB holds a
lock on it while it is open), and a second run to the path of a live one is refused."""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

import numpy as np
import pyarrow as pa

from neurodash.errors import NeurodashError
from neurodash.storage.connect import connect
from neurodash.storage.schema import STORE
from neurodash.units import Source

_QUEUED = 4  # statements waiting for the writer's thread at most
# DuckDB writes the whole row groups (of this many rows) of an insert compressed, straight into the
# file: not into its log, and nothing is left for the checkpoint at commit. So a table's appends wait
# until they fill a row group, then go in as the whole groups they fill; the rest waits for more, or
# for ``flush``. (A statement costs ~2 ms too: a run's hundreds of small score tables took 3.5x as
# long inserted one by one, and each batch's sequences inserted during the pass slowed the forward
# by ~8% on two cores.)
_ROW_GROUP = 122_880
_PENDING_BYTES = 64 << 20  # a table's appends waiting hold at most about this much, whole groups or not
_DUCKDB_VECTOR = 2048  # DuckDB reads Arrow in vectors of up to this many rows, one chunk at a time
# DuckDB checkpoints its write-ahead log into the file every 16 MiB by default: a run's hundreds of
# small inserts then rewrite the tables' last row groups again and again (a run of every layer spent
# 9 of its 13 s of inserts there). The writer checkpoints once, at ``commit``, or every 1 GB of log.
_CHECKPOINT_EVERY = "1GB"


class StoreWriter:
    """Write a new store; ``commit()`` renames it into place, anything else leaves no trace.

    >>> with StoreWriter("store.duckdb") as w:  # doctest: +SKIP
    ...     w.add_source(source); w.append("units", {...}); w.commit()
    """

    def __init__(self, path: str | os.PathLike, overwrite: bool = False):
        self.path = Path(path)
        check_writable(self.path, overwrite)
        self.partial = partial_path(self.path).absolute()
        self._remove_partial()  # a killed run's leftovers
        self.con = connect(self.partial)
        self.con.execute(f"SET checkpoint_threshold = '{_CHECKPOINT_EVERY}'")
        _WRITING.add(self.partial)
        self.committed = False
        self.insert_seconds = 0.0  # the writer thread's time in inserts (what a run reports; ``flush`` first)
        # Every statement runs on one thread of the writer's own, in order, while the caller goes on
        # (DuckDB lets go of the GIL): a run computes its next table while the last one is inserted.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="neurodash-writer")
        self._queued: deque[Future] = deque()
        self._pending: dict[str, _Pending] = {}  # each table's appends not yet inserted
        self.con.execute(STORE.ddl)
        self.set_meta(schema_version=STORE.version)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        if not self.committed:
            self.abort()

    def set_meta(self, **items: object) -> None:
        for key, value in items.items():
            self._submit(self.con.execute, "INSERT INTO meta VALUES (?, ?)", [key, str(value)])

    def add_source(self, s: Source) -> None:
        self._submit(
            self.con.execute,
            "INSERT INTO sources VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                s.source_id,
                s.model,
                s.hook,
                s.kind,
                s.layer,
                s.n_units,
                s.sae,
                s.n_tokens,
                json.dumps(s.config),
                datetime.now(timezone.utc),
            ],
        )

    def append(self, table: str, columns: dict[str, Sequence | np.ndarray] | pa.Table) -> None:
        """Bulk-append columns (in the table's column order) through Arrow, on the writer's thread:
        the arrays must not change after this call. A table's rows keep the order of its appends,
        inserted in whole row groups (``_ROW_GROUP``) and the rest by ``flush``."""
        if table not in STORE.tables and table not in STORE.optional_tables:
            raise ValueError(f"unknown table {table!r}")
        data = (
            pa.table({k: _arrow_column(v) for k, v in columns.items()})
            if isinstance(columns, dict)
            else columns
        )
        if not data.num_rows:
            return
        pending = self._pending.setdefault(table, _Pending())
        if pending.parts and data.column_names != pending.parts[0].column_names:  # joined by name
            raise ValueError(f"{table}: columns {data.column_names} after {pending.parts[0].column_names}")
        pending.add(data)
        if pending.rows >= _ROW_GROUP:
            self._send(table, whole_groups=True)
        elif pending.nbytes >= _PENDING_BYTES:  # wide rows (long windows' token ids): not GBs held
            self._send(table)

    def _send(self, table: str, whole_groups: bool = False) -> None:
        """Queue the insert of ``table``'s pending appends: all of them, or (``whole_groups``) the
        rows that fill whole row groups, the rest left pending."""
        pending = self._pending.pop(table)
        sent = pending.rows - pending.rows % _ROW_GROUP if whole_groups else pending.rows
        head, rest = _split(pending.parts, sent)
        if rest:
            self._pending[table] = _Pending()
            for part in rest:
                self._pending[table].add(part)
        self._submit(self._insert, table, *head)

    def _insert(self, table: str, *parts: pa.Table) -> None:
        """Insert ``parts`` together (columns of one name: their types promoted to the widest, as
        the insert casts them to the table's anyway)."""
        started = time.perf_counter()
        data = pa.concat_tables(parts, promote_options="permissive")
        if data.num_rows < len(parts) * _DUCKDB_VECTOR:  # small chunks: one copy, then whole vectors
            data = data.combine_chunks()
        self.con.register("_incoming", data)
        self.con.execute(f"INSERT INTO {table} SELECT * FROM _incoming")
        self.con.unregister("_incoming")
        self.insert_seconds += time.perf_counter() - started

    def _submit(self, fn: Callable[..., object], *args: object) -> None:
        """Queue a statement; wait while more than ``_QUEUED`` are (their tables take memory). An
        error of a queued statement is raised here, or by ``flush``."""
        self._queued.append(self._thread.submit(fn, *args))
        while len(self._queued) > _QUEUED or (self._queued and self._queued[0].done()):
            self._queued.popleft().result()

    def flush(self, wait: bool = True) -> None:
        """Queue the insert of every pending append, and (unless not ``wait``) wait for every queued
        statement, raising the first error."""
        for table in list(self._pending):
            self._send(table)
        while wait and self._queued:
            self._queued.popleft().result()

    def commit(self) -> Path:
        self.flush()
        self._thread.shutdown()
        self.con.execute("CHECKPOINT")
        self.con.close()
        _WRITING.discard(self.partial)
        os.replace(self.partial, self.path)
        self.committed = True
        return self.path

    def abort(self) -> None:
        self._thread.shutdown(cancel_futures=True)  # waits for the statement under way
        self._queued.clear()
        self._pending.clear()
        try:
            self.con.close()
        finally:
            _WRITING.discard(self.partial)
            self._remove_partial()

    def _remove_partial(self) -> None:
        self.partial.unlink(missing_ok=True)
        Path(str(self.partial) + ".wal").unlink(missing_ok=True)


@dataclass
class _Pending:
    """A table's appends not inserted yet, and their rows and bytes."""

    parts: list[pa.Table] = field(default_factory=list)
    rows: int = 0
    nbytes: int = 0

    def add(self, data: pa.Table) -> None:
        self.parts.append(data)
        self.rows += data.num_rows
        self.nbytes += data.nbytes


def _split(parts: list[pa.Table], rows: int) -> tuple[list[pa.Table], list[pa.Table]]:
    """``parts`` cut after their first ``rows`` rows (slices share the parts' memory)."""
    for i, part in enumerate(parts):
        if rows < part.num_rows:
            head = [*parts[:i], part.slice(0, rows)] if rows else parts[:i]
            return head, [part.slice(rows), *parts[i + 1 :]]
        rows -= part.num_rows
    return parts, []


_WRITING: set[Path] = set()  # the partial stores this process writes (its own locks cannot be tested)
_DUCKDB_MAGIC = (8, b"DUCK")


def partial_path(path: Path) -> Path:
    """Where a store is built before it is renamed into place."""
    return path.with_name(path.name + ".partial")


def remove_leftovers(folder: Path) -> list[tuple[Path, int]]:
    """Remove what killed runs left in ``folder``: partial stores no live process writes (and their
    write-ahead logs). Returns each file removed with its size."""
    removed = []
    folder = folder.absolute()
    for partial in sorted(
        {*folder.glob("*.partial"), *(w.with_suffix("") for w in folder.glob("*.partial.wal"))}
    ):
        if partial in _WRITING or _locked(partial) or (partial.exists() and not _is_duckdb(partial)):
            continue
        for path in (partial, Path(f"{partial}.wal")):
            try:
                size = path.stat().st_size
                path.unlink()
            except OSError:  # gone meanwhile, or (Windows) open in another process
                continue
            removed.append((path, size))
    return removed


def _is_duckdb(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            head = f.read(12)
    except OSError:
        return False
    offset, magic = _DUCKDB_MAGIC
    return head[offset : offset + len(magic)] == magic


def _locked(path: Path) -> bool:
    """Whether another process holds DuckDB's lock on ``path``: it has the file open, writing it.
    (A lock of this process would be released by the test, so callers skip ``_WRITING`` first.)"""
    if fcntl is None:
        return False  # Windows: an open file cannot be removed, which protects it instead
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _arrow_column(values: Sequence | np.ndarray) -> pa.Array:
    """``pa.array(values)``, made from whole arrays where it can be (each way below is 10-40x faster
    than Arrow's conversion element by element)."""
    if isinstance(values, np.ndarray) and values.ndim == 2:  # fixed-width rows -> list column
        flat = pa.array(values.reshape(-1))
        offsets = np.arange(0, values.size + 1, values.shape[1], dtype=np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), flat)
    if not isinstance(values, list) or not values:
        return pa.array(values)
    if all(isinstance(v, np.ndarray) and v.ndim == 1 for v in values):  # rows of any width -> list column
        offsets = np.concatenate([[0], np.cumsum([len(v) for v in values])])
        if offsets[-1] < 2**31:  # the offsets' range
            flat = pa.array(np.concatenate(values))
            return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), flat)
    if isinstance(values[0], str) and values.count(values[0]) == len(values):  # one string repeated
        one = values[0].encode()
        if len(one) * len(values) < 2**31:  # the offsets' range
            offsets = np.arange(len(values) + 1, dtype=np.int32) * np.int32(len(one))
            return pa.StringArray.from_buffers(
                len(values), pa.py_buffer(offsets), pa.py_buffer(one * len(values))
            )
    return pa.array(values)


def check_writable(path: Path, overwrite: bool) -> None:
    """Refuse an existing store (unless overwrite) or a folder that is missing or read-only."""
    if path.exists() and not overwrite:
        raise NeurodashError(f"{path} exists: pass --overwrite to replace it")
    if path.is_dir():
        raise NeurodashError(f"{path} is a directory, not a store file")
    partial = partial_path(path).absolute()
    if partial in _WRITING or _locked(partial):
        raise NeurodashError(f"another run is writing {path} now (it holds {partial})")
    folder = path.parent
    if not folder.is_dir():
        raise NeurodashError(f"cannot write {path}: folder {folder} does not exist")
    probe = folder / f".{path.name}.probe"
    try:  # a real write: permissions, read-only mounts and root all answer truthfully
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise NeurodashError(f"cannot write {path}: folder {folder} is not writable ({e.strerror})") from None
