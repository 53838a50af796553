"""Find units by what they fire on: a token or a short string typed into the overview's search box
(or into the jump box, which sends anything that is not a unit reference here as ``/?q=...``) lists
the units whose top examples peak on it, across every source (``Store.units_peaking_on``)."""

from __future__ import annotations

from collections.abc import Sequence

from dash import Dash, Input, Output, dcc, html

from neurodash.app import ids, state
from neurodash.app.data import label_prefixes, unit_label
from neurodash.app.render import tables, widgets
from neurodash.units import TokenPeaks

LIMIT = 50
SUBSTRING = "substring"


def layout(query: str = "") -> html.Section:
    """The search box (filled with ``query``, from the address), the mode and the results."""
    return widgets.panel(
        "Find units by token",
        html.Div(
            [
                dcc.Input(
                    id=ids.SEARCH_INPUT,
                    type="text",
                    value=query,
                    placeholder="a token or a string: 6,  import, Paris …",
                    debounce=0.25,
                    autoComplete="off",
                    spellCheck=False,
                    className="nd-search-input",
                ),
                dcc.Checklist(
                    id=ids.SEARCH_MODE,
                    options=[{"label": " tokens containing it (case ignored)", "value": SUBSTRING}],
                    value=[],
                    inline=True,
                    className="nd-muted",
                ),
            ],
            className="nd-toolbar",
        ),
        html.Div(results(query, substring=False) if query else [], id=ids.SEARCH_RESULTS),
    )


def results(text: str | None, substring: bool) -> list:
    """The results area for ``text``: a line saying what was found, and the table."""
    if not text or not (text if substring else text.strip()):
        return []
    store = state.current().store
    found = store.units_peaking_on(text, substring=substring, limit=LIMIT)
    how = "containing" if substring else "equal to"
    if not found:
        return [html.P(f"No unit's top examples peak on a token {how} {text!r}.", className="nd-muted")]
    more = " (the first 50)" if len(found) == LIMIT else ""
    return [
        html.P(
            f"{len(found)} units{more} whose top examples peak on a token {how} {text!r}, most such "
            "examples first.",
            className="nd-muted",
        ),
        table(found, label_prefixes(store.sources())),
    ]


def table(found: Sequence[TokenPeaks], prefixes: dict[str, str | None]) -> html.Table:
    sources = {s.source_id: s for s in state.current().store.sources()}
    head = ["unit", "kind", "top examples peaking there", "max there", "tokens"]
    body = [
        html.Tr(
            [
                html.Td(widgets.unit_link(unit_label(p.ref, prefixes), p.ref)),
                html.Td(sources[p.ref.source_id].kind.replace("_", " ")),
                html.Td(f"{p.n} of {p.n_top}", className="nd-num"),
                html.Td(f"{p.value:+.3f}", className="nd-num"),
                html.Td(html.Code(", ".join(repr(t) for t in p.tokens)), className="nd-token-cell"),
            ],
            className="nd-search-row",
        )
        for p in found
    ]
    return tables.headed_table(head, body)


def on_search(text: str | None, mode: list[str] | None) -> list:
    return results(text, SUBSTRING in (mode or []))


def register_callbacks(app: Dash) -> None:
    app.callback(
        Output(ids.SEARCH_RESULTS, "children"),
        Input(ids.SEARCH_INPUT, "value"),
        Input(ids.SEARCH_MODE, "value"),
        prevent_initial_call=True,
    )(on_search)
