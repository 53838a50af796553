"""The unit page's current unit: one ``dcc.Store``, written once when the page is built, that the
callbacks of every unit-page panel (downloads, sets, maximization) read, rather than each finding
the unit from the address its own way."""

from __future__ import annotations

from dash import State, dcc

from neurodash.app import ids
from neurodash.units import UnitRef


def holder(ref: UnitRef) -> dcc.Store:
    """The store that holds ``ref`` on its page."""
    return dcc.Store(id=ids.CURRENT_UNIT, data={"source_id": ref.source_id, "unit": ref.unit})


def state() -> State:
    """The callback argument that receives the current unit's data (``read`` it)."""
    return State(ids.CURRENT_UNIT, "data")


def read(data: object) -> UnitRef | None:
    """The unit ``holder`` wrote, or None where there is none (a page without one, or bad data)."""
    if not isinstance(data, dict):
        return None
    source_id, unit = data.get("source_id"), data.get("unit")
    if not isinstance(source_id, str) or not isinstance(unit, int) or isinstance(unit, bool) or unit < 0:
        return None
    return UnitRef(source_id, unit)
