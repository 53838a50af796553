"""The app's addresses: every page's path or path template, the hrefs that lead to them, and a unit read
back from a path. Pages register with these, panels and renderers link with them; nothing else spells
out a path.

A unit's page is ``/unit/<source>/<index>``: its source id is percent-encoded (ids such as ``L12.mlp``
stay as they are) so that any id makes one path segment, and read back decoded. A set's page is
``/sets?name=...``, the name query-encoded.

An attention head is a unit too (source ``L{layer}.attn``), but its page is ``/head/<layer>/<head>``:
``unit_href`` of a head leads there, and ``/unit/L3.attn/2`` shows the same page.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from urllib.parse import quote, unquote, urlencode

from neurodash.units import UnitRef, head_source_id

OVERVIEW = "/"
PROBE = "/probe"
SETS = "/sets"
HEADS = "/heads"
NOT_FOUND = "/404"
UNIT_PREFIX = "/unit/"
UNIT_TEMPLATE = UNIT_PREFIX + "<source_id>/<index>"  # Dash passes source_id and index to the layout
HEAD_PREFIX = "/head/"
HEAD_TEMPLATE = HEAD_PREFIX + "<layer>/<head>"  # an attention head's page
LAB = "/lab"  # the circuit lab: its settings (or a saved run's id) in the query
UNITS_TABLE_DATA = (
    "/_neurodash/units-table.json"  # the overview's table of every unit, fetched by the browser
)

_INDEX = re.compile(r"[0-9]+")
_HEAD_SOURCE = re.compile(r"L(0|[1-9][0-9]*)\.attn")  # units.head_source_id's ids


def unit_source_href(source_id: str) -> str:
    """The start of the paths of a source's units: ``unit_source_href(s) + "7"`` is unit 7's page
    (a head's page for a source of heads)."""
    layer = head_layer(source_id)
    if layer is not None:
        return f"{HEAD_PREFIX}{layer}/"
    return f"{UNIT_PREFIX}{quote(source_id, safe='')}/"


def head_layer(source_id: str) -> int | None:
    """The layer of a source of heads (``L3.attn`` -> 3), or None for any other source."""
    m = _HEAD_SOURCE.fullmatch(source_id)
    return int(m.group(1)) if m else None


def head_href(layer: int, head: int) -> str:
    """A head's page: ``/head/3/2``."""
    return f"{HEAD_PREFIX}{layer}/{head}"


def unit_href(ref: UnitRef) -> str:
    """The unit's page (its permalink path)."""
    return f"{unit_source_href(ref.source_id)}{ref.unit}"


def search_href(text: str) -> str:
    """The overview with ``text`` in its search box (units whose top examples peak on it)."""
    return f"{OVERVIEW}?{urlencode({'q': text})}"


def set_href(name: str | None = None) -> str:
    """The sets page, showing set ``name`` when given."""
    return SETS if name is None else f"{SETS}?{urlencode({'name': name})}"


def unit_ref(source_id: str | None, index: str | None) -> UnitRef | None:
    """The unit the variables of ``UNIT_TEMPLATE`` name, or None when they name none (this says
    nothing about whether a store has it)."""
    if not source_id or index is None or not _INDEX.fullmatch(index):
        return None
    return UnitRef(unquote(source_id), int(index))


def head_ref(layer: str | None, head: str | None) -> UnitRef | None:
    """The head the variables of ``HEAD_TEMPLATE`` name (as a unit of ``L{layer}.attn``), or None when
    they name none (this says nothing about whether a store has it)."""
    if layer is None or head is None or not _INDEX.fullmatch(layer) or not _INDEX.fullmatch(head):
        return None
    return UnitRef(head_source_id(int(layer)), int(head))


def parse_unit_path(pathname: str | None) -> UnitRef | None:
    """The unit whose page is at ``pathname`` (as the browser gives it, a trailing ``/`` allowed; a head's
    page too), or None."""
    for prefix, read in ((UNIT_PREFIX, unit_ref), (HEAD_PREFIX, head_ref)):
        if pathname and pathname.startswith(prefix):
            parts = pathname[len(prefix) :].rstrip("/").split("/")
            return read(*parts) if len(parts) == 2 else None
    return None


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
