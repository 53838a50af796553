"""The app's addresses: every page's path or path template, the hrefs that lead to them, and a unit read
back from a path. Pages register with these, panels and renderers link with them; nothing else spells
out a path.

A unit's page is ``/unit/<source>/<index>``: its source id is percent-encoded (ids such as ``L12.mlp``
stay as they are) so that any id makes one path segment, and read back decoded. A set's page is
``/sets?name=...``, the name query-encoded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from urllib.parse import quote, unquote, urlencode

from neurodash.units import UnitRef

OVERVIEW = "/"
PROBE = "/probe"
SETS = "/sets"
NOT_FOUND = "/404"
UNIT_PREFIX = "/unit/"
UNIT_TEMPLATE = UNIT_PREFIX + "<source_id>/<index>"  # Dash passes source_id and index to the layout
LAB = "/lab"  # the circuit lab: its settings (or a saved run's id) in the query
HEAD_PREFIX = "/head/"  # an attention head's page, /head/<layer>/<head> (the heads pages)

_INDEX = re.compile(r"[0-9]+")


def unit_source_href(source_id: str) -> str:
    """The start of the paths of a source's units: ``unit_source_href(s) + "7"`` is unit 7's page."""
    return f"{UNIT_PREFIX}{quote(source_id, safe='')}/"


def unit_href(ref: UnitRef) -> str:
    """The unit's page (its permalink path)."""
    return f"{unit_source_href(ref.source_id)}{ref.unit}"


def set_href(name: str | None = None) -> str:
    """The sets page, showing set ``name`` when given."""
    return SETS if name is None else f"{SETS}?{urlencode({'name': name})}"


def unit_ref(source_id: str | None, index: str | None) -> UnitRef | None:
    """The unit the variables of ``UNIT_TEMPLATE`` name, or None when they name none (this says
    nothing about whether a store has it)."""
    if not source_id or index is None or not _INDEX.fullmatch(index):
        return None
    return UnitRef(unquote(source_id), int(index))


def parse_unit_path(pathname: str | None) -> UnitRef | None:
    """The unit whose page is at ``pathname`` (as the browser gives it, a trailing ``/`` allowed), or None."""
    if not pathname or not pathname.startswith(UNIT_PREFIX):
        return None
    parts = pathname[len(UNIT_PREFIX) :].rstrip("/").split("/")
    return unit_ref(*parts) if len(parts) == 2 else None


def head_href(layer: int, head: int) -> str:
    """An attention head's page."""
    return f"{HEAD_PREFIX}{layer}/{head}"


def lab_href(query: Mapping[str, Sequence[str]] | None = None, run_id: int | None = None) -> str:
    """The lab with these settings (``LabSettings.to_query``) and/or a saved run."""
    items = [("run", str(run_id))] if run_id is not None else []
    items += [(key, v) for key, values in (query or {}).items() for v in values]
    return f"{LAB}?{urlencode(items)}" if items else LAB


def lab_steer_href(ref: UnitRef, coefficient: float = 4.0) -> str:
    """The lab with ``ref`` filled in to steer with (the unit pages' Steer link)."""
    return lab_href({"steer": [f"{ref}={coefficient:g}"]})


def set_name(name: str | list[str] | None) -> str | None:
    """The set named by the sets page's ``name`` query value (the first, if given more than once)."""
    return name[0] if isinstance(name, list) else name
