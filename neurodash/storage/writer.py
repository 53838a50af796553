"""``StoreWriter`` builds a new store in a ``.partial`` file and renames it into place only when
everything is written, so an interrupted run never leaves a half-written store behind or damages
an existing one."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from neurodash.errors import NeurodashError
from neurodash.storage.connect import connect
from neurodash.storage.schema import STORE
from neurodash.units import Source


class StoreWriter:
    """Write a new store; ``commit()`` renames it into place, anything else leaves no trace.

    >>> with StoreWriter("store.duckdb") as w:  # doctest: +SKIP
    ...     w.add_source(source); w.append("units", {...}); w.commit()
    """

    def __init__(self, path: str | os.PathLike, overwrite: bool = False):
        self.path = Path(path)
        check_writable(self.path, overwrite)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self._remove_partial()  # a killed run's leftovers
        self.con = connect(self.partial)
        self.con.execute(STORE.ddl)
        self.set_meta(schema_version=STORE.version)
        self.committed = False

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        if not self.committed:
            self.abort()

    def set_meta(self, **items: object) -> None:
        for key, value in items.items():
            self.con.execute("INSERT INTO meta VALUES (?, ?)", [key, str(value)])

    def add_source(self, s: Source) -> None:
        self.con.execute(
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
        """Bulk-append columns (in the table's column order) through Arrow."""
        if table not in STORE.tables and table not in STORE.optional_tables:
            raise ValueError(f"unknown table {table!r}")
        data = (
            pa.table({k: _arrow_column(v) for k, v in columns.items()})
            if isinstance(columns, dict)
            else columns
        )
        if data.num_rows:
            self.con.register("_incoming", data)
            self.con.execute(f"INSERT INTO {table} SELECT * FROM _incoming")
            self.con.unregister("_incoming")

    def commit(self) -> Path:
        self.con.execute("CHECKPOINT")
        self.con.close()
        os.replace(self.partial, self.path)
        self.committed = True
        return self.path

    def abort(self) -> None:
        try:
            self.con.close()
        finally:
            self._remove_partial()

    def _remove_partial(self) -> None:
        self.partial.unlink(missing_ok=True)
        Path(str(self.partial) + ".wal").unlink(missing_ok=True)


def _arrow_column(values: Sequence | np.ndarray) -> pa.Array:
    if isinstance(values, np.ndarray) and values.ndim == 2:  # fixed-width rows -> list column
        flat = pa.array(values.reshape(-1))
        offsets = np.arange(0, values.size + 1, values.shape[1], dtype=np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), flat)
    return pa.array(values)


def check_writable(path: Path, overwrite: bool) -> None:
    """Refuse an existing store (unless overwrite) or a folder that is missing or read-only."""
    if path.exists() and not overwrite:
        raise NeurodashError(f"{path} exists: pass --overwrite to replace it")
    if path.is_dir():
        raise NeurodashError(f"{path} is a directory, not a store file")
    folder = path.parent
    if not folder.is_dir():
        raise NeurodashError(f"cannot write {path}: folder {folder} does not exist")
    probe = folder / f".{path.name}.probe"
    try:  # a real write: permissions, read-only mounts and root all answer truthfully
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise NeurodashError(f"cannot write {path}: folder {folder} is not writable ({e.strerror})") from None
