"""Tables of units and sources (HTML), and the AG Grid settings the app's grids share."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from dash import html

from neurodash.app.data import unit_label
from neurodash.app.render.widgets import unit_link
from neurodash.units import Source, UnitRef

# AG Grid: a column of numbers (filtered as numbers, right-aligned, 3 decimals), and the grids' options
NUMBER_COLUMN = {
    "filter": "agNumberColumnFilter",
    "type": "rightAligned",
    "minWidth": 90,
    "valueFormatter": {"function": "ndFixed(params.value, 3)"},
}
GRID_OPTIONS = {"animateRows": False, "suppressCellFocus": True, "rowHeight": 30, "headerHeight": 34}


def headed_table(head: Sequence[str], rows: Sequence[html.Tr]) -> html.Table:
    """A table of the app's style: a header row of ``head``, then ``rows``."""
    return html.Table(
        [html.Thead(html.Tr([html.Th(h) for h in head])), html.Tbody(rows)], className="nd-table"
    )


def units_table(
    frame: pd.DataFrame,
    prefixes: dict[str, str | None],
    columns: Mapping[str, str],
    number: Callable[[Any], str],
) -> html.Table:
    """A row per unit of ``frame`` (its ``source_id``, ``unit`` and ``layer``): the unit, linked, its
    layer, and the value of each of ``columns`` (column: heading) as ``number`` writes it."""
    body = [
        html.Tr(
            [
                html.Td(unit_link(unit_label(ref, prefixes), ref)),
                html.Td(row["layer"], className="nd-num"),
                *(html.Td(number(row[m]), className="nd-num") for m in columns),
            ]
        )
        for row in frame.to_dict("records")
        for ref in [UnitRef(str(row["source_id"]), int(row["unit"]))]
    ]
    return headed_table(["unit", "layer", *columns.values()], body)


def sources_table(sources: Sequence[Source], labels: dict[str, str | None]) -> html.Table:
    head = ["source", "kind", "hook", "layer", "units", "tokens seen", "jump"]
    rows = [
        html.Tr(
            [
                html.Td(s.source_id),
                html.Td(s.kind.replace("_", " ")),
                html.Td(html.Code(s.hook)),
                html.Td(s.layer, className="nd-num"),
                html.Td(f"{s.n_units:,}", className="nd-num"),
                html.Td(f"{s.n_tokens:,}", className="nd-num"),
                html.Td(unit_link(f"{labels[s.source_id] or s.source_id + '/'}0", UnitRef(s.source_id, 0))),
            ]
        )
        for s in sources
    ]
    return headed_table(head, rows)


@dataclass(frozen=True)
class RankedUnit:
    """A unit the probe found: its label and reference, its activation, that as a fraction of its max
    over the corpus, that max, and the token where it was read (if shown)."""

    label: str
    ref: UnitRef
    act: float
    fraction: float
    corpus_max: float
    token: str | None = None


def ranked_units(rows: Sequence[RankedUnit], empty: str) -> html.Table | html.P:
    """Units found by the probe: link, activation, the unit's own max over the corpus, the fraction of
    it (a bar), and where (if given)."""
    if not rows:
        return html.P(empty, className="nd-muted")
    with_token = any(row.token is not None for row in rows)
    head = ["unit", "activation", "its max", "of its max", *(["at token"] if with_token else [])]
    body = [
        html.Tr(
            [
                html.Td(unit_link(row.label, row.ref)),
                html.Td(f"{row.act:+.3f}", className="nd-num"),
                html.Td(f"{row.corpus_max:+.3f}", className="nd-num nd-muted"),
                html.Td(
                    html.Div(
                        [
                            html.Div(
                                html.Div(
                                    className="nd-bar-fill",
                                    style={"width": f"{min(max(row.fraction, 0), 1) * 100:.0f}%"},
                                ),
                                className="nd-bar",
                            ),
                            html.Span(f"{row.fraction:.0%}", className="nd-num"),
                        ],
                        className="nd-bar-cell",
                    )
                ),
                *([html.Td(html.Code(row.token), className="nd-token-cell")] if with_token else []),
            ]
        )
        for row in rows
    ]
    return headed_table(head, body)
