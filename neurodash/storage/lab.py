"""The circuit lab's runs file: every run saved beside the store (``demo.duckdb`` ->
``demo.lab.duckdb``), never in the read-only analysis store; its table is ``schema.LAB``. A run is
kept whole as JSON (``LabRun.to_json``) beside the columns the run list shows. As with the other
app-owned files, every call opens the file, works in one transaction and closes it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from neurodash import paths
from neurodash.lab_run import LabRun
from neurodash.storage import owned
from neurodash.storage.schema import LAB


@dataclass(frozen=True)
class LabRunSummary:
    """One line of the run list."""

    run_id: int
    model: str
    prompts: tuple[str, ...]
    query: dict[str, list[str]]  # the settings as a URL query (``LabSettings.to_query``)
    seconds: float
    created_at: datetime | None


def lab_path(store_path: str | os.PathLike) -> Path:
    """The lab runs file beside a store: ``demo.duckdb`` -> ``demo.lab.duckdb``."""
    return paths.beside(store_path, "lab")


class LabRuns(owned.OwnedFile):
    """The lab runs of one store, in the file ``path``."""

    kind = "lab"
    schema = LAB

    def save(self, run: LabRun) -> int:
        """Keep a run; returns its id."""
        with self._connect() as con:
            (run_id,) = con.execute(
                "INSERT INTO lab_runs VALUES (nextval('lab_run_ids'), ?, ?, ?, ?, ?, ?) RETURNING run_id",
                [
                    run.model,
                    list(run.settings.prompts),
                    json.dumps(run.settings.to_query()),
                    run.seconds,
                    json.dumps(run.to_json()),
                    run.created_at or owned.now(),
                ],
            ).fetchall()[0]
        return int(run_id)

    def get(self, run_id: int) -> LabRun | None:
        """The run, or None when there is none of that id."""
        if not self.path.exists():
            return None
        with self._connect(read_only=True) as con:
            row = con.execute("SELECT result FROM lab_runs WHERE run_id = ?", [run_id]).fetchone()
        if row is None:
            return None
        data = json.loads(row[0])
        data["run_id"] = run_id
        return LabRun.from_json(data)

    def list(self, limit: int = 50) -> list[LabRunSummary]:
        """The latest runs, newest first."""
        if not self.path.exists():
            return []
        with self._connect(read_only=True) as con:
            rows = con.execute(
                "SELECT run_id, model, prompts, query, seconds, created_at FROM lab_runs "
                "ORDER BY run_id DESC LIMIT ?",
                [limit],
            ).fetchall()
        return [
            LabRunSummary(int(i), model, tuple(prompts), json.loads(query), seconds, created)
            for i, model, prompts, query, seconds, created in rows
        ]
