"""Unit page (``/unit/<source>/<index>``): what one neuron or feature does."""

from __future__ import annotations

from dash import ALL, Dash, Input, Output, State, ctx, dcc, html
from dash.exceptions import PreventUpdate

from neurodash.app import ids, render, state
from neurodash.app.data import adjacent_units, label_prefixes, unit_label
from neurodash.app.panels import maximize as maximize_panel
from neurodash.app.panels import polysemanticity
from neurodash.app.panels import sets as sets_panel
from neurodash.storage import Store
from neurodash.units import SAE_FEATURE, UnitRef

PATH_TEMPLATE = "/unit/<source_id>/<index>"
DOWNLOAD_FORMATS = ("csv", "jsonl", "parquet", "html")


def resolve(store: Store, source_id: str | None, index: str | None) -> UnitRef | None:
    """The unit a path names, or None when the store has no such unit."""
    if source_id is None or index is None or not index.isdigit():
        return None
    ref = UnitRef(source_id, int(index))
    return ref if store.has_unit(ref) else None


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
        return render.not_found(
            f"This store has no unit {source_id}/{index}.", where_units_are(store, source_id)
        )
    sources = store.sources()
    source, prefixes = store.source(ref.source_id), label_prefixes(sources)
    stats = store.unit_stats(ref)
    neighbors = store.neighbors(ref)
    prev, nxt = adjacent_units(ref, sources)
    max_abs = max(stats.max_act, -stats.min_act, 1e-9)
    examples, scores = store.examples(ref), store.scores(ref)
    return html.Div(
        [
            render.unit_header(
                unit_label(ref, prefixes),
                source,
                (unit_label(prev, prefixes), prev) if prev else None,
                (unit_label(nxt, prefixes), nxt) if nxt else None,
                state.permalink(ref.path),
            ),
            html.Div(
                [
                    render.panel(
                        "Statistics",
                        render.unit_stat_cards(stats, scores),
                        render.graph(render.histogram_figure(stats), ids.HISTOGRAM),
                    ),
                    render.panel(
                        "Direct logit effect",
                        render.graph(render.logit_figure(store.logit_effects(ref)), ids.LOGITS),
                    ),
                    html.Div(
                        [
                            render.panel(
                                f"Nearest units (cosine of {'decoder' if source.kind == SAE_FEATURE else 'output'} "
                                "directions)",
                                render.neighbor_list(
                                    neighbors, [unit_label(r, prefixes) for r, _ in neighbors]
                                ),
                            ),
                            *links_panels(store, ref, prefixes),
                        ],
                        className="nd-stack",
                    ),
                ],
                className="nd-grid-3",
            ),
            render.dead_note(stats),
            render.download_buttons(DOWNLOAD_FORMATS),
            sets_panel.layout(),
            html.Div(
                id=ids.TOKEN_INSPECTOR,
                className="nd-inspector",
                children="Hover a token to see its exact value.",
            ),
            polysemanticity.unit_panel(
                scores, examples, store.clusters(ref), max_abs, features_behind(store, ref, prefixes)
            ),
            render.panel("Examples", *render.example_sections(examples, max_abs, add_buttons=True)),
            maximize_panel.panel(ref, store.path),
            html.P(
                "Keys: j or → next unit · k or ← previous · / jump to a unit", className="nd-muted nd-keys"
            ),
        ]
    )


def links_panels(store: Store, ref: UnitRef, prefixes: dict[str, str | None]) -> list[html.Section]:
    """The bridge between neurons and features: one panel per SAE (or layer) this unit is tied to."""
    by_source: dict[str, list] = {}
    for link in store.links(ref):
        by_source.setdefault(link.ref.source_id, []).append(link)
    feature_page = store.source(ref.source_id).kind == SAE_FEATURE
    return [
        render.panel(
            f"Neurons of {target} this feature writes to (share of its decoder row)"
            if feature_page
            else f"Features of {target} behind this neuron (share of its activation mass)",
            render.link_list(links, [unit_label(link.ref, prefixes) for link in links]),
        )
        for target, links in by_source.items()
    ]


def features_behind(
    store: Store, ref: UnitRef, prefixes: dict[str, str | None], n: int = 6
) -> list[polysemanticity.FeatureBehind]:
    """A neuron's SAE features with the largest shares of its mass, each with its strongest example."""
    if store.source(ref.source_id).kind == SAE_FEATURE:
        return []
    links = sorted(store.links(ref), key=lambda link: -link.share)[:n]
    strongest = store.strongest_examples([link.ref for link in links])
    return [
        polysemanticity.FeatureBehind(link, unit_label(link.ref, prefixes), strongest[link.ref])
        for link in links
        if link.ref in strongest
    ]


def unit_at(store: Store, pathname: str | None) -> UnitRef | None:
    """The unit whose page is at ``pathname``, or None."""
    parts = (pathname or "").strip("/").split("/")
    return resolve(store, *parts[1:3]) if len(parts) == 3 and parts[0] == "unit" else None


def download_examples(store: Store, pathname: str | None, fmt: str) -> dict:
    """Every example of the unit at ``pathname`` as a file of ``fmt``, for ``dcc.Download``."""
    from neurodash.export import Selection, export_bytes

    ref = unit_at(store, pathname)
    if ref is None or fmt not in DOWNLOAD_FORMATS:
        raise PreventUpdate
    data = export_bytes(store, Selection(units=[str(ref)]), fmt)
    return dcc.send_bytes(data, f"{ref.source_id}-{ref.unit}.{fmt}")


def register_callbacks(app: Dash) -> None:
    @app.callback(
        Output(ids.DOWNLOAD, "data"),
        Input({"type": ids.DOWNLOAD_FORMAT, "fmt": ALL}, "n_clicks"),
        State(ids.NAV_LOCATION, "pathname"),
        prevent_initial_call=True,
    )
    def on_download(clicks: list[int | None], pathname: str | None) -> dict:
        if not any(clicks) or not isinstance(ctx.triggered_id, dict):
            raise PreventUpdate
        return download_examples(state.current().store, pathname, ctx.triggered_id["fmt"])
