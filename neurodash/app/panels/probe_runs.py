"""The text probe's runs, kept in the app's cache folder under one key each: the result (the text, its
tokens and the rankings, as the page shows them) as JSON, and every unit's activation on the text
[tokens, units] as an array. A run so has an address, ``/probe?run=KEY``: Back from a unit page returns
to it, and the text can be coloured by any unit, read back here on the server (the browser holds the
top units only).
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path
from urllib.parse import urlencode

import numpy as np

from neurodash import paths
from neurodash.app import routes
from neurodash.units import UnitRef

KEEP = 8  # the latest runs kept (a run of 512 tokens over the demo store's 21k units: 44 MB)
_KEY = re.compile(r"[0-9a-f]{32}")


def folder() -> Path:
    return paths.home() / "cache" / "probe"


def run_href(key: str) -> str:
    """The probe page showing the run saved under ``key``."""
    return f"{routes.PROBE}?{urlencode({'run': key})}"


def save(result: dict, acts: np.ndarray, where: Path | None = None) -> str:
    """Keep ``result`` (JSON-ready) and ``acts`` [tokens, units in ``result["columns"]`` order] under a
    new key; the oldest runs beyond ``KEEP`` go."""
    where = where or folder()
    where.mkdir(parents=True, exist_ok=True)
    key = uuid.uuid4().hex
    np.save(where / f"{key}.npy", acts.astype(np.float32, copy=False))
    partial = where / f"{key}.json.partial"
    partial.write_text(json.dumps(result), encoding="utf-8")
    os.replace(partial, where / f"{key}.json")  # a run is listed once whole
    for old in sorted(where.glob("*.json"), key=lambda p: p.stat().st_mtime)[:-KEEP]:
        old.unlink(missing_ok=True)
        old.with_suffix(".npy").unlink(missing_ok=True)
    return key


def _path(key: object, suffix: str, where: Path | None) -> Path | None:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        return None
    return (where or folder()) / f"{key}{suffix}"


def load(key: object, where: Path | None = None) -> dict | None:
    """The result saved under ``key`` (with its ``key``), or None (no such key, or gone)."""
    path = _path(key, ".json", where)
    try:
        return json.loads(path.read_text(encoding="utf-8")) | {"key": key} if path else None
    except (OSError, ValueError):
        return None


def unit_acts(result: dict, ref: UnitRef, where: Path | None = None) -> list[float] | None:
    """``ref``'s activation at every token of a saved run, or None (a unit the probe did not read, or
    the run is gone)."""
    offset = 0
    for source_id, n_units in result.get("columns", []):
        if source_id == ref.source_id and 0 <= ref.unit < n_units:
            break
        offset += n_units
    else:
        return None
    path = _path(result.get("key"), ".npy", where)
    try:
        acts = np.load(path, mmap_mode="r") if path else None
    except (OSError, ValueError):
        return None
    if acts is None or acts.ndim != 2 or offset + ref.unit >= acts.shape[1]:
        return None
    return [round(float(v), 4) for v in acts[:, offset + ref.unit]]
