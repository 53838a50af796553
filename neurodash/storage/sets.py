"""Curated example sets: named lists of a store's examples, each with an optional note.

Sets live in a small DuckDB file the app owns, beside the store (``demo.duckdb`` ->
``demo.sets.duckdb``), never in the read-only analysis store; its tables are ``schema.SETS``. Every
call opens the file, does its work in one transaction and closes it: the dashboard and a
``neurodash export --set`` in another process take turns (DuckDB lets one process at a time open a
file for writing).

An example is kept by its key in the store, (unit, bucket, rank), with its sequence and position,
so an export can tell when the store was rebuilt under the set.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import pandas as pd

from neurodash import paths
from neurodash.errors import NeurodashError
from neurodash.storage import owned
from neurodash.storage.reader import Store
from neurodash.storage.schema import EXAMPLE_KEYS, SET_ITEM_COLUMNS, SETS
from neurodash.units import Example, UnitRef, parse_ref

MAX_NAME = 200


@dataclass(frozen=True)
class SetInfo:
    name: str
    n_examples: int
    created_at: datetime


def sets_path(store_path: str | os.PathLike) -> Path:
    """The sets file beside a store: ``demo.duckdb`` -> ``demo.sets.duckdb``."""
    return paths.beside(store_path, "sets")


class ExampleSets(owned.OwnedFile):
    """The curated sets of one store, in the file ``path``."""

    kind = "sets"
    schema = SETS

    # --- reading ----------------------------------------------------------------------------
    def all(self) -> list[SetInfo]:
        """Every set, by name, with its size."""
        if not self.path.exists():  # a folder here is refused on opening
            return []
        with self._connect() as con:
            rows = con.execute(
                "SELECT s.name, count(e.set_id), s.created_at FROM sets s "
                "LEFT JOIN set_examples e USING (set_id) GROUP BY ALL ORDER BY s.name"
            ).fetchall()
        return [SetInfo(*row) for row in rows]

    def items(self, name: str) -> pd.DataFrame:
        """A set's examples in the order they were added: source_id, unit, bucket, rank, seq_id, pos,
        note, added_at."""
        self._must_exist(name)
        with self._connect() as con:
            set_id = self._id(con, name)
            return con.execute(
                f"SELECT {', '.join(SET_ITEM_COLUMNS)} FROM set_examples WHERE set_id = ? ORDER BY item_id",
                [set_id],
            ).df()

    def example_keys(self, name: str, buckets: Sequence[str] = ()) -> pd.DataFrame:
        """A set's examples in ``buckets`` (empty: all), in the order they were added, as their keys in
        the store (``EXAMPLE_KEYS``) and their note."""
        self._must_exist(name)
        with self._connect() as con:
            set_id = self._id(con, name)
            return con.execute(
                f"SELECT {', '.join(EXAMPLE_KEYS)}, note FROM set_examples WHERE set_id = ? "
                "AND (len(?::VARCHAR[]) = 0 OR bucket IN (SELECT unnest(?::VARCHAR[]))) ORDER BY item_id",
                [set_id, list(buckets), list(buckets)],
            ).df()

    # --- writing ----------------------------------------------------------------------------
    def create(self, name: str) -> None:
        with self._connect() as con:
            self._create(con, _valid_name(name))

    def rename(self, old: str, new: str) -> None:
        new = _valid_name(new)
        self._must_exist(old)
        with self._connect() as con:
            set_id = self._id(con, old)
            if new != old and self._find(con, new) is not None:
                raise NeurodashError(f"a set named {new!r} exists already")
            con.execute("UPDATE sets SET name = ? WHERE set_id = ?", [new, set_id])

    def delete(self, name: str) -> None:
        self._must_exist(name)
        with self._connect() as con:
            set_id = self._id(con, name)
            con.execute("DELETE FROM set_examples WHERE set_id = ?", [set_id])
            con.execute("DELETE FROM sets WHERE set_id = ?", [set_id])

    def add(self, name: str, examples: Iterable[Example], note: str | None = None) -> int:
        """Add examples to the set (created if new); an example already there gets the new note, if
        one is given. Returns how many examples were given."""
        name = _valid_name(name)
        rows = [(e.ref.source_id, e.ref.unit, e.bucket, e.rank, e.seq_id, e.pos) for e in examples]
        with self._connect() as con:
            set_id = self._find(con, name)
            if set_id is None:
                set_id = self._create(con, name)
            now = owned.now()
            con.executemany(
                "INSERT INTO set_examples VALUES (?, nextval('item_ids'), ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO UPDATE SET note = coalesce(excluded.note, note)",
                [(set_id, *row, note, now) for row in rows],
            )
        return len(rows)

    def add_example(
        self,
        store: Store,
        name: str,
        ref: UnitRef | str,
        *,
        bucket: str | None = None,
        rank: int | None = None,
        seq_id: int | None = None,
        pos: int | None = None,
        note: str | None = None,
    ) -> Example:
        """Add one example of a unit, named by (bucket, rank) or (seq_id, pos); return it."""
        example = find_example(store, ref, bucket=bucket, rank=rank, seq_id=seq_id, pos=pos)
        self.add(name, [example], note)
        return example

    def add_top(self, store: Store, name: str, ref: UnitRef | str, note: str | None = None) -> int:
        """Add every top example of a unit; return how many."""
        examples = store.examples(_ref(store, ref), ["top"])
        if not examples:
            raise NeurodashError(f"unit {ref} has no top examples")
        return self.add(name, examples, note)

    def remove(self, name: str, ref: UnitRef | str, bucket: str, rank: int) -> None:
        ref = ref if isinstance(ref, UnitRef) else parse_ref(ref)
        self._must_exist(name)
        with self._connect() as con:
            con.execute(
                "DELETE FROM set_examples WHERE set_id = ? AND source_id = ? AND unit = ? AND bucket = ? AND rank = ?",
                [self._id(con, name), ref.source_id, ref.unit, bucket, rank],
            )

    # --- the file ---------------------------------------------------------------------------
    def _must_exist(self, name: str) -> None:
        if not self.path.exists():  # a folder here is refused on opening
            raise NeurodashError(f"no set named {name!r}: there is no sets file {self.path}")

    def _find(self, con: duckdb.DuckDBPyConnection, name: str) -> int | None:
        row = con.execute("SELECT set_id FROM sets WHERE name = ?", [name]).fetchone()
        return row[0] if row else None

    def _id(self, con: duckdb.DuckDBPyConnection, name: str) -> int:
        set_id = self._find(con, name)
        if set_id is None:
            names = [r[0] for r in con.execute("SELECT name FROM sets ORDER BY name").fetchall()]
            raise NeurodashError(f"no set named {name!r} in {self.path} (sets: {', '.join(names) or 'none'})")
        return set_id

    def _create(self, con: duckdb.DuckDBPyConnection, name: str) -> int:
        if self._find(con, name) is not None:
            raise NeurodashError(f"a set named {name!r} exists already")
        rows = con.execute(
            "INSERT INTO sets VALUES (nextval('set_ids'), ?, ?) RETURNING set_id", [name, owned.now()]
        ).fetchall()
        return rows[0][0]


def find_example(
    store: Store,
    ref: UnitRef | str,
    *,
    bucket: str | None = None,
    rank: int | None = None,
    seq_id: int | None = None,
    pos: int | None = None,
) -> Example:
    """A unit's example by (bucket, rank) or, the first in display order, by (seq_id, pos)."""
    ref = _ref(store, ref)
    if (
        (bucket is None) == (seq_id is None)
        or (bucket is None) != (rank is None)
        or (seq_id is None) != (pos is None)
    ):
        raise ValueError("name an example by bucket and rank, or by seq_id and pos")
    for e in store.examples(ref, [bucket] if bucket is not None else None):
        if (e.rank == rank) if bucket is not None else (e.seq_id == seq_id and e.pos == pos):
            return e
    where = f"{bucket} #{rank}" if bucket is not None else f"sequence {seq_id} position {pos}"
    raise NeurodashError(f"unit {ref} has no example {where}")


def _ref(store: Store, ref: UnitRef | str) -> UnitRef:
    return parse_ref(str(ref), store.sources())


def _valid_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME:
        raise NeurodashError(f"a set's name must have 1 to {MAX_NAME} characters")
    return name
