"""The unit page's explanation panel: each explainer's explanation of the unit (from the explanations
file beside the store, written by ``neurodash explain``), its simulation score on held-out text, and
the held-out tokens where the simulation was most wrong."""

from __future__ import annotations

import os
import re

from dash import html

from neurodash.app.render import widgets
from neurodash.explain import Explanation, WrongToken
from neurodash.heldout import FRESH
from neurodash.storage.explanations import Explanations
from neurodash.units import UnitRef

PANEL_ID = "nd-explanation"
_QUOTED = re.compile(r"(`[^`]+`)")


def panel(ref: UnitRef, store_path: str | os.PathLike) -> html.Section:
    found = Explanations.beside(store_path).of_unit(ref)
    if not found:
        body = [
            html.P(
                ["No explanation yet: ", html.Code("neurodash explain STORE"), " writes them."],
                className="nd-muted",
            )
        ]
    else:
        body = [_one(e) for e in found]
    return html.Section(
        [html.H2("Explanation", className="nd-panel-title"), *body], className="nd-panel", id=PANEL_ID
    )


def _one(e: Explanation) -> html.Div:
    return html.Div(
        [
            html.P([html.Strong(f"{e.explainer}: "), *_text(e.text)], className="nd-explanation-text"),
            widgets.stat_cards(
                [
                    ("correlation", _number(e.correlation)),
                    ("precision", _number(e.precision)),
                    ("recall", _number(e.recall)),
                    ("held-out tokens", f"{e.n_scored:,}"),
                ]
            ),
            html.P(
                f"Scored by simulating the explanation on {_held_out(e)}: Pearson correlation with the "
                "true activations; precision and recall of “fires at half its max or more”.",
                className="nd-muted",
            ),
            _most_wrong(e.most_wrong()),
        ],
        className="nd-explanation",
    )


def _held_out(e: Explanation) -> str:
    """The held-out text the explanation was scored on, in words."""
    held = e.details.get("held_out") or {}
    if held.get("text") == FRESH:
        return (
            f"fresh text: {held.get('tokens', 0):,} corpus tokens after the store's, never shown to the "
            f"explainer ({held.get('file')})"
        )
    return "held-out windows of the store's own examples (not shown to the explainer)"


def _text(text: str) -> list:
    """The explanation, its quoted tokens as code."""
    return [
        html.Code(part[1:-1]) if _QUOTED.fullmatch(part) else part for part in _QUOTED.split(text) if part
    ]


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _most_wrong(wrong: list[WrongToken]) -> html.Div | None:
    if not wrong:
        return None
    rows = [
        html.Tr(
            [
                html.Td(
                    [html.Code(w.context[-40:]), html.Code(html.Strong(w.token))], className="nd-token-cell"
                ),
                html.Td(f"{w.true:.2f}"),
                html.Td(f"{w.simulated:.2f}"),
            ]
        )
        for w in wrong
    ]
    head = html.Tr(
        [html.Th("held-out token (in bold, after its context)"), html.Th("true"), html.Th("simulated")]
    )
    return html.Div(
        [
            html.H3("Where the simulation was most wrong", className="nd-subtitle"),
            html.Table([html.Thead(head), html.Tbody(rows)], className="nd-table nd-wrong-table"),
            html.P("Values are fractions of the unit's max activation.", className="nd-muted"),
        ]
    )
