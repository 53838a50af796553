"""Background jobs that are running now, as files: a page built while a job runs (after a reload, or
in another tab) shows it with its progress, rather than "no run yet".

A job writes ``<folder>/<key>.json`` when it starts and at each step (its process id, when it started,
steps done and in all) and removes it when it ends; a file whose process is gone is stale and ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from neurodash import paths


@dataclass(frozen=True)
class Running:
    """A job in progress: ``done`` of ``total`` steps, started at ``started`` (epoch seconds)."""

    done: int
    total: int
    started: float

    def seconds_left(self, now: float | None = None) -> float | None:
        """The time left at the pace so far; None before the first step."""
        if self.done <= 0:
            return None
        elapsed = (now if now is not None else time.time()) - self.started
        return max(elapsed / self.done * (self.total - self.done), 0.0)


def folder() -> Path:
    return paths.home() / "cache" / "running"


def key(kind: str, store_path: str | os.PathLike, unit: str) -> str:
    """The file name of a job: its kind, the store and the unit it is for."""
    digest = hashlib.sha1(f"{Path(store_path).resolve()}|{unit}".encode()).hexdigest()[:20]
    return f"{kind}-{digest}"


def report(job: str, done: int, total: int, started: float) -> None:
    """Write (or update) the job's file, for this process."""
    target = folder() / f"{job}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "done": done, "total": total, "started": started}))
    tmp.replace(target)


def finish(job: str) -> None:
    (folder() / f"{job}.json").unlink(missing_ok=True)


def find(job: str) -> Running | None:
    """The job if it runs now (its file is there and its process alive), else None."""
    try:
        data = json.loads((folder() / f"{job}.json").read_text())
        os.kill(int(data["pid"]), 0)  # raises if the process is gone
        return Running(int(data["done"]), int(data["total"]), float(data["started"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def eta_text(seconds: float | None) -> str:
    """``about 40 s left``, ``about 3 min left``; "" without an estimate."""
    if seconds is None:
        return ""
    return f"about {seconds:.0f} s left" if seconds < 90 else f"about {seconds / 60:.0f} min left"
