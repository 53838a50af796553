"""The activation-maximization results file: the frontiers found for a store's units.

Results live in a small DuckDB file the app owns, beside the store (``demo.duckdb`` ->
``demo.maximize.duckdb``), never in the read-only analysis store; its tables are
``schema.MAXIMIZE``. As with the sets file, every call opens the file, works in one transaction and
closes it, so the dashboard's background jobs and a ``neurodash maximize`` in another process take
turns.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from neurodash import paths
from neurodash.results import FoundPrompt, Frontier
from neurodash.storage import owned
from neurodash.storage.schema import MAXIMIZE
from neurodash.units import UnitRef


def results_path(store_path: str | os.PathLike) -> Path:
    """The results file beside a store: ``demo.duckdb`` -> ``demo.maximize.duckdb``."""
    return paths.beside(store_path, "maximize")


class MaximizeResults(owned.OwnedFile):
    """The maximization runs of one store, in the file ``path``."""

    kind = "maximize"
    schema = MAXIMIZE

    def save(self, frontier: Frontier) -> int:
        """Keep a run; returns its id."""
        f = frontier
        with self._connect() as con:
            (run_id,) = con.execute(
                "INSERT INTO runs VALUES (nextval('run_ids'), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING run_id",
                [
                    f.ref.source_id,
                    f.ref.unit,
                    f.model,
                    f.length,
                    f.steps,
                    f.seed,
                    f.corpus_max,
                    f.seconds,
                    json.dumps(f.settings),
                    f.created_at or owned.now(),
                ],
            ).fetchall()[0]
            con.executemany(
                "INSERT INTO prompts VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        run_id,
                        rank,
                        list(p.token_ids),
                        list(p.tokens),
                        p.text,
                        p.activation,
                        p.cross_entropy,
                        list(p.acts),
                    )
                    for rank, p in enumerate(f.prompts)
                ],
            )
        return run_id

    def latest(self, ref: UnitRef) -> Frontier | None:
        """The unit's most recent run, or None (read again only when the file has changed: every unit
        page asks, and opening the file costs more than building the rest of the panel)."""
        version = owned.version(self.path)
        return _latest(self.path, version, ref) if ref in _units_with_runs(self.path, version) else None

    def _latest(self, ref: UnitRef) -> Frontier | None:
        runs = self._runs(
            "WHERE source_id = ? AND unit = ? ORDER BY run_id DESC LIMIT 1", [ref.source_id, ref.unit]
        )
        return runs[0] if runs else None

    def all(self) -> list[Frontier]:
        """Every run, oldest first."""
        return self._runs("ORDER BY run_id", [])

    def _runs(self, where: str, params: list) -> list[Frontier]:
        if not self.path.exists():  # a folder here is refused on opening
            return []
        with self._connect(read_only=True) as con:
            runs = con.execute(
                "SELECT run_id, source_id, unit, model, length, steps, seed, corpus_max, seconds, settings, "
                f"created_at FROM runs {where}",
                params,
            ).fetchall()
            prompts = con.execute(
                "SELECT run_id, token_ids, tokens, text, activation, cross_entropy, acts FROM prompts "
                "WHERE run_id IN (SELECT unnest(?::BIGINT[])) ORDER BY run_id, rank",
                [[r[0] for r in runs]],
            ).fetchall()
        by_run: dict[int, list[FoundPrompt]] = {}
        for run_id, ids, tokens, text, act, ce, acts in prompts:
            by_run.setdefault(run_id, []).append(
                FoundPrompt(tuple(ids), tuple(tokens), text, act, ce, tuple(acts))
            )
        return [
            Frontier(
                UnitRef(src, unit),
                model,
                length,
                steps,
                seed,
                corpus_max,
                tuple(by_run.get(run_id, ())),
                seconds,
                json.loads(settings or "{}"),
                created_at,
            )
            for run_id, src, unit, model, length, steps, seed, corpus_max, seconds, settings, created_at in runs
        ]


@functools.lru_cache(maxsize=1024)
def _latest(path: Path, version: tuple, ref: UnitRef) -> Frontier | None:
    return MaximizeResults(path)._latest(ref)


@functools.lru_cache(maxsize=16)
def _units_with_runs(path: Path, version: tuple) -> frozenset[UnitRef]:
    if not path.exists():
        return frozenset()
    with MaximizeResults(path)._connect(read_only=True) as con:
        rows = con.execute("SELECT DISTINCT source_id, unit FROM runs").fetchall()
    return frozenset(UnitRef(source_id, unit) for source_id, unit in rows)
