"""Where neurodash keeps its files: caches, the demo store, and the app-owned files beside a store."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """``$NEURODASH_HOME``, default ``~/.cache/neurodash``."""
    return Path(os.environ.get("NEURODASH_HOME") or Path.home() / ".cache" / "neurodash")


def demo_store_path() -> Path:
    return home() / "demo.duckdb"


def beside(store_path: str | os.PathLike, kind: str) -> Path:
    """An app-owned file beside a store: ``beside("demo.duckdb", "sets")`` -> ``demo.sets.duckdb``.

    The analysis store is opened read-only; what the app writes (curated sets, maximization
    results) lives in these small files instead.
    """
    path = Path(store_path)
    return path.with_name(f"{path.stem}.{kind}.duckdb")
