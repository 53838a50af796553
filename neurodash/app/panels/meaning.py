"""Find units by meaning: a query in words ("closing brackets") typed into the overview's second search
box, or into the jump box (``/?q=...``), lists the units whose texts (their strongest examples, their
explanation) mean most nearly the same, across every source (``neurodash.meaning``).

The query is embedded in the server process by the sentence-embedding model, loaded once
(``precompute.embed.cached_embedder``; ``serve`` warms it at start-up where the store is embedded)."""

from __future__ import annotations

from collections.abc import Sequence

from dash import Dash, Input, Output, dcc, html

from neurodash.app import ids, state
from neurodash.app.data import label_prefixes, unit_label
from neurodash.app.render import widgets
from neurodash.errors import NeurodashError
from neurodash.meaning import LIMIT, MeaningHit, embed_command, has_embeddings, search_by_meaning

TEXT_WIDTH = 140  # characters of a unit's matching text shown


def layout(query: str = "") -> html.Section:
    """The search box (filled with ``query``, from the address) and the results."""
    return widgets.panel(
        "Find units by meaning",
        html.Div(
            [
                dcc.Input(
                    id=ids.MEANING_INPUT,
                    type="text",
                    value=query,
                    placeholder="a query in words: closing brackets, numbers in a list …",
                    debounce=0.4,
                    autoComplete="off",
                    className="nd-search-input",
                ),
                html.Span(
                    "nearest in meaning to each unit's strongest examples and explanation",
                    className="nd-muted",
                ),
            ],
            className="nd-toolbar",
        ),
        html.Div(results(query) if query else _hint(), id=ids.MEANING_RESULTS),
    )


def results(query: str | None) -> list:
    """The results area for ``query``: a line saying what was found, and the table."""
    if not query or not query.strip():
        return _hint()
    store = state.current().store
    try:
        found = search_by_meaning(store.path, query, LIMIT)
    except NeurodashError as e:
        return [html.P(str(e), className="nd-muted")]
    return [
        html.P(
            f"The {len(found)} units nearest in meaning to {query.strip()!r}, across every source "
            "(cosine similarity of sentence embeddings).",
            className="nd-muted",
        ),
        table(found, label_prefixes(store.sources())),
    ]


def _hint() -> list:
    """Nothing, or how to make the embeddings where the store has none."""
    store = state.current().store
    try:
        if has_embeddings(store.path):
            return []
    except NeurodashError as e:
        return [html.P(str(e), className="nd-muted")]
    return [
        html.P(
            f"This store's units are not embedded yet: `{embed_command(store.path)}` makes them.",
            className="nd-muted",
        )
    ]


def table(found: Sequence[MeaningHit], prefixes: dict[str, str | None]) -> html.Table:
    sources = {s.source_id: s for s in state.current().store.sources()}
    head = ["unit", "kind", "similarity", "explanation", "score", "what it fires on"]
    body = [
        html.Tr(
            [
                html.Td(widgets.unit_link(unit_label(h.ref, prefixes), h.ref)),
                html.Td(
                    sources[h.ref.source_id].kind.replace("_", " ") if h.ref.source_id in sources else ""
                ),
                html.Td(f"{h.similarity:.3f}", className="nd-num"),
                html.Td(h.explanation or "—"),
                html.Td("" if h.correlation is None else f"{h.correlation:.2f}", className="nd-num"),
                html.Td(
                    html.Code(_shorten(h.text if h.text_kind != "explanation" else "")),
                    className="nd-meaning-text",
                ),
            ],
            className="nd-meaning-row",
        )
        for h in found
    ]
    return html.Table(
        [html.Thead(html.Tr([html.Th(x) for x in head])), html.Tbody(body)], className="nd-table"
    )


def _shorten(text: str) -> str:
    return text if len(text) <= TEXT_WIDTH else text[: TEXT_WIDTH - 1] + "…"


def register_callbacks(app: Dash) -> None:
    app.callback(
        Output(ids.MEANING_RESULTS, "children"),
        Input(ids.MEANING_INPUT, "value"),
        prevent_initial_call=True,
    )(results)
