"""The explanations file beside a store (``demo.duckdb`` -> ``demo.explanations.duckdb``): units'
scored explanations, one per unit and explainer (table ``explanations`` of ``schema.EXPLANATIONS``;
its ``embeddings`` table has its own module). Every call opens the file, works in one transaction and
closes it, as the other app-owned files do.

Also the queries that read what the explainers need from a store: units' windows with the tokens
before them (``unit_windows``), and whole sequences for the model steps (``sequences``).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import pyarrow as pa

from neurodash import paths
from neurodash.explain import MAX_DISTANCE, Explanation, Window
from neurodash.heldout import STORE_WINDOWS
from neurodash.storage import owned
from neurodash.storage.reader import Store
from neurodash.storage.schema import EXPLANATIONS
from neurodash.units import UnitRef

_COLUMNS = (
    "source_id, unit, explainer, explanation, correlation, precision, recall, n_scored, details, created_at"
)


def explanations_path(store_path: str | os.PathLike) -> Path:
    return paths.beside(store_path, "explanations")


class Explanations(owned.OwnedFile):
    """The explanations of one store's units, in the file ``path``."""

    kind = "explanations"
    schema = EXPLANATIONS

    def save(self, explanations: Sequence[Explanation]) -> None:
        """Keep explanations, replacing a unit's earlier one by the same explainer."""
        if not explanations:
            return
        now = owned.now()
        rows = pa.table(
            {
                "source_id": [e.ref.source_id for e in explanations],
                "unit": pa.array([e.ref.unit for e in explanations], pa.int32()),
                "explainer": [e.explainer for e in explanations],
                "explanation": [e.text for e in explanations],
                "correlation": pa.array([e.correlation for e in explanations], pa.float64()),
                "precision": pa.array([e.precision for e in explanations], pa.float64()),
                "recall": pa.array([e.recall for e in explanations], pa.float64()),
                "n_scored": pa.array([e.n_scored for e in explanations], pa.int32()),
                "details": [json.dumps(e.details, allow_nan=False) for e in explanations],
                "created_at": pa.array([e.created_at or now for e in explanations], pa.timestamp("us")),
            }
        )
        with self._connect() as con:  # one bulk insert through Arrow, not row by row
            con.register("_nd_explanations", rows)
            con.execute(f"INSERT OR REPLACE INTO explanations ({_COLUMNS}) SELECT * FROM _nd_explanations")
            con.unregister("_nd_explanations")

    def of_unit(self, ref: UnitRef) -> list[Explanation]:
        """A unit's explanations, the best scored first (read again only when the file has changed)."""
        return list(_of_unit(self.path, owned.version(self.path), ref))

    def _of_unit(self, ref: UnitRef) -> tuple[Explanation, ...]:
        return tuple(
            self._select(
                "WHERE source_id = ? AND unit = ? ORDER BY correlation DESC NULLS LAST, explainer",
                [ref.source_id, ref.unit],
            )
        )

    def all(self, explainer: str | None = None) -> list[Explanation]:
        """Every explanation (of one explainer), in unit order."""
        where = "WHERE explainer = ?" if explainer else ""
        return self._select(f"{where} ORDER BY source_id, unit, explainer", [explainer] if explainer else [])

    def explained(self, explainer: str, held_out: dict | None = None) -> set[UnitRef]:
        """The units that ``explainer`` has explained already (and scored on the held-out text
        ``held_out`` records, where given; an explanation that records none was scored on
        ``STORE_WINDOWS``)."""
        if not self.path.exists():
            return set()
        with self._connect(read_only=True) as con:
            rows = con.execute(
                "SELECT source_id, unit, details FROM explanations WHERE explainer = ?", [explainer]
            ).fetchall()
        return {UnitRef(s, u) for s, u, d in rows if held_out is None or _held_out(d) == held_out}

    def _select(self, where: str, params: list) -> list[Explanation]:
        if not self.path.exists():
            return []
        with self._connect(read_only=True) as con:
            rows = con.execute(f"SELECT {_COLUMNS} FROM explanations {where}", params).fetchall()
        return [
            Explanation(UnitRef(s, u), ex, text, c, p, r, n, json.loads(d or "{}"), at)
            for s, u, ex, text, c, p, r, n, d, at in rows
        ]


def _held_out(details: str | None) -> dict:
    return json.loads(details or "{}").get("held_out") or {"text": STORE_WINDOWS}


@functools.lru_cache(maxsize=1024)
def _of_unit(path: Path, version: tuple, ref: UnitRef) -> tuple[Explanation, ...]:
    return Explanations(path)._of_unit(ref)


def unit_windows(store: Store, source_id: str, units: Sequence[int]) -> dict[int, tuple[float, list[Window]]]:
    """Per unit of one source: its max activation and every stored window (all buckets), each with the
    ``MAX_DISTANCE`` tokens of its sequence before it; one query for all of ``units``."""
    rows = store.sql(
        "SELECT e.unit, u.max_act, e.bucket, e.rank, e.seq_id, e.start, e.acts, "
        f"list_slice(s.token_ids, greatest(e.start - {MAX_DISTANCE}, 0) + 1, e.start) AS context, "
        "list_slice(s.token_ids, e.start + 1, e.start + len(e.acts)) AS token_ids "
        "FROM examples e JOIN sequences s USING (seq_id) JOIN units u USING (source_id, unit) "
        "WHERE e.source_id = ? AND e.unit IN (SELECT unnest(?::INTEGER[])) ORDER BY e.unit, e.bucket, e.rank",
        [source_id, list(units)],
    ).fetchall()
    found: dict[int, tuple[float, list[Window]]] = {}
    for unit, max_act, bucket, rank, seq_id, start, acts, context, token_ids in rows:
        entry = found.setdefault(unit, (float(max_act), []))
        entry[1].append(Window(seq_id, start, tuple(context), tuple(token_ids), tuple(acts), bucket, rank))
    return found


def sequences(store: Store, seq_ids: Iterable[int]) -> dict[int, tuple[int, ...]]:
    """The stored sequences' token ids (BOS first, as the pipeline ran them), one query for all."""
    rows = store.sql(
        "SELECT seq_id, token_ids FROM sequences WHERE seq_id IN (SELECT unnest(?::BIGINT[]))",
        [sorted(seq_ids)],
    ).fetchall()
    return {seq_id: tuple(ids) for seq_id, ids in rows}
