"""Overview (``routes.OVERVIEW``, ``/``): the store's sources (neurons', features' and heads'), per-layer
distributions, the most and least polysemantic units, the sparsest units, and the table of every unit (``panels/units_table.py``)."""

from __future__ import annotations

from dash import Dash, html
from dash.development.base_component import Component

from neurodash.app import ids, state
from neurodash.app.data import box_stats, label_prefixes
from neurodash.app.panels import meaning, polysemanticity, search, sparsity, units_table
from neurodash.app.render import figures, tables, widgets
from neurodash.app.state import AppState
from neurodash.units import HEAD, NEURON, SAE_FEATURE, Source

TITLE = "neurodash"
DISTRIBUTIONS = ("max_act", "density")
RELATIVE_FREQUENCIES = ("freq_10", "freq_50")  # where the store has them: sparsity on each unit's own scale


def layout(q: str | list[str] | None = None, **_query) -> html.Div:
    """The overview; ``q`` (``/?q=...``, from the jump box) fills both search boxes (by token and by
    meaning) and their results. All but the searches is the same for every visit: built once per app
    (``AppState.once``)."""
    above, below = state.current().once(fixed_parts)
    query = q[0] if isinstance(q, list) else q or ""
    return html.Div([*above, search.layout(query), meaning.layout(query), *below])


def fixed_parts(app_state: AppState) -> tuple[list[Component], list[Component]]:
    """The parts above the search (title, stat cards, sources) and below it (per-layer distributions,
    the polysemanticity ranking, the units table)."""
    store, sources = app_state.store, app_state.store.sources()
    meta = store.meta
    n_units = sum(s.n_units for s in sources)
    metrics = [*DISTRIBUTIONS, *(m for m in RELATIVE_FREQUENCIES if m in app_state.units)]
    metrics += [m for m in app_state.score_metrics if m not in metrics]
    units = app_state.units
    is_head = units["kind"] == HEAD
    not_heads = units.loc[~is_head] if is_head.any() else units  # a head's density (of a norm) means nothing
    boxes = {m: box_stats(not_heads if m == "density" else units, m) for m in metrics}
    above = [
        html.H1("Overview", className="nd-title"),
        widgets.stat_cards(
            [
                ("model", meta.get("model", "?")),
                ("dataset", meta.get("dataset", "?")),
                ("tokens seen", f"{int(meta.get('n_tokens', 0)):,}"),
                ("sources", f"{len(sources)}"),
                ("units", f"{n_units:,}"),
            ]
        ),
        html.Details(
            [
                html.Summary(["Sources", html.Span(f"{len(sources)}", className="nd-count")]),
                tables.sources_table(sorted(sources, key=kind_order), label_prefixes(sources)),
            ],
            open=len(sources) <= 8,
            className="nd-section",
        ),
    ]
    below = [
        widgets.panel("Per layer", figures.graph(figures.layer_distribution_figure(boxes), ids.LAYER_PLOTS)),
        polysemanticity.ranking_panel(app_state.units, label_prefixes(sources), app_state.firing_tokens),
        sparsity.sparsest_panel(
            app_state.units, label_prefixes(sources), {s.source_id: s.n_tokens for s in sources}
        ),
        units_table.layout(app_state),
    ]
    return above, below


def kind_order(source: Source) -> tuple[int, int, str]:
    """Neurons, then SAE features, then heads; by layer within each."""
    return ({NEURON: 0, SAE_FEATURE: 1, HEAD: 2}.get(source.kind, 3), source.layer, source.source_id)


def register_callbacks(app: Dash) -> None:
    units_table.register_callbacks(app)
    search.register_callbacks(app)
    meaning.register_callbacks(app)
