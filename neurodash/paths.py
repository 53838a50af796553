"""Where neurodash keeps its caches: converted models and the demo store."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """``$NEURODASH_HOME``, default ``~/.cache/neurodash``."""
    return Path(os.environ.get("NEURODASH_HOME") or Path.home() / ".cache" / "neurodash")


def demo_store_path() -> Path:
    return home() / "demo.duckdb"
