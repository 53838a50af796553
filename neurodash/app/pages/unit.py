"""Unit page (``routes.UNIT_TEMPLATE``, ``/unit/<source>/<index>``): what one neuron or feature does.
A head's address here (``/unit/L3.attn/2``) shows the head page (``pages/head.py``).

It leads with what identifies the unit (statistics, histogram, logits, then its top examples), then
your own text on it, the polysemanticity breakdown, and activation maximization.

The page holds the current unit (``current_unit``) for its panels' callbacks; the panels, with their
callbacks, are in ``app/panels/``.
"""

from __future__ import annotations

import os

from dash import Dash, dcc, html

from neurodash.app import current_unit, ids, routes, state
from neurodash.app.data import adjacent_units, label_prefixes, unit_label
from neurodash.app.pages import head
from neurodash.app.panels import downloads, explanation, neighbors, own_text, polysemanticity
from neurodash.app.panels import maximize as maximize_panel
from neurodash.app.panels import sets as sets_panel
from neurodash.app.render import figures, highlights, widgets
from neurodash.storage import Store
from neurodash.units import HEAD, UnitRef


def resolve(store: Store, source_id: str | None, index: str | None) -> UnitRef | None:
    """The unit the path's variables name, or None when the store has no such unit."""
    ref = routes.unit_ref(source_id, index)
    return ref if ref is not None and store.has_unit(ref) else None


def where_units_are(store: Store, source_id: str | None) -> str:
    """A hint for a unit that is not there: the source's range, or the store's sources."""
    sources = store.sources()
    known = {s.source_id: s for s in sources}
    if source_id in known:
        return f"{source_id} has units 0 to {known[source_id].n_units - 1}."
    names = ", ".join(s.source_id for s in sources[:6]) + (", …" if len(sources) > 6 else "")
    return f"Its sources are {names}."


def title(source_id: str | None = None, index: str | None = None) -> str:
    return f"{source_id}/{index} · neurodash"


def layout(source_id: str | None = None, index: str | None = None, **_query) -> html.Div:
    store = state.current().store
    ref = resolve(store, source_id, index)
    if ref is None:
        return widgets.not_found(
            f"This store has no unit {source_id}/{index}.", where_units_are(store, source_id)
        )
    if store.source(ref.source_id).kind == HEAD:
        return head.page(store, ref)
    sources = store.sources()
    prefixes = label_prefixes(sources)
    stats = store.unit_stats(ref)
    prev, nxt = adjacent_units(ref, sources)
    max_abs = max(stats.max_act, -stats.min_act, 1e-9)
    examples, scores = store.examples(ref), store.scores(ref)
    return html.Div(
        [
            current_unit.holder(ref),
            widgets.unit_header(
                unit_label(ref, prefixes),
                store.source(ref.source_id),
                (unit_label(prev, prefixes), prev) if prev else None,
                (unit_label(nxt, prefixes), nxt) if nxt else None,
                state.permalink(routes.unit_href(ref)),
            ),
            dcc.Link(
                "Steer in the lab", href=routes.lab_steer_href(ref), className="nd-button nd-steer-link"
            ),
            html.Div(
                [
                    widgets.panel(
                        "Statistics",
                        widgets.unit_stat_cards(stats, scores),
                        figures.graph(figures.histogram_figure(stats), ids.HISTOGRAM),
                    ),
                    widgets.panel(
                        "Direct logit effect",
                        figures.graph(figures.logit_figure(store.logit_effects(ref)), ids.LOGITS),
                    ),
                    neighbors.layout(store, ref, prefixes),
                ],
                className="nd-grid-3",
            ),
            widgets.dead_note(stats),
            explanation.panel(ref, store.path),
            downloads.layout(),
            sets_panel.layout(),
            html.Div(
                id=ids.TOKEN_INSPECTOR,
                className="nd-inspector",
                children="Hover a token to see its exact value.",
            ),
            widgets.panel("Examples", *highlights.example_sections(examples, max_abs, add_buttons=True)),
            own_text.panel(max_abs),
            polysemanticity.unit_panel(
                scores,
                examples,
                store.clusters(ref),
                max_abs,
                polysemanticity.features_behind(store, ref, prefixes),
                polysemanticity.features_behind(store, ref, prefixes, strong=True),
            ),
            maximize_panel.panel(ref, store.path),
            html.P(
                "Keys: j or → next unit · k or ← previous · / jump to a unit", className="nd-muted nd-keys"
            ),
        ]
    )


def register_callbacks(app: Dash, store_path: str | os.PathLike) -> None:
    """The callbacks of the page's panels (``store_path`` for the maximization jobs)."""
    downloads.register_callbacks(app)
    sets_panel.register_callbacks(app)
    maximize_panel.register_callbacks(app, store_path)
    own_text.register_callbacks(app, store_path)
