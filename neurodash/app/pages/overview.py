"""Overview (``/``): the store's sources, per-layer distributions, and the table of every unit."""

from __future__ import annotations

import dash_ag_grid as dag
from dash import ClientsideFunction, Dash, Input, Output, State, dcc, html

from neurodash.app import ids, polysemanticity, render, state
from neurodash.app.data import STAT_COLUMNS, box_stats, label_prefixes, units_payload

PATH = "/"
TITLE = "neurodash"
DISTRIBUTIONS = ("max_act", "density")
HEADERS = {"max_act": "max", "min_act": "min", "mean_act": "mean", "std_act": "std"}


def layout(**_query) -> html.Div:
    app_state = state.current()
    store, sources = app_state.store, app_state.store.sources()
    meta = store.meta
    metrics = [*STAT_COLUMNS, *app_state.score_metrics]
    n_units = sum(s.n_units for s in sources)
    boxes = {m: box_stats(app_state.units, m) for m in (*DISTRIBUTIONS, *app_state.score_metrics)}
    return html.Div(
        [
            html.H1("Overview", className="nd-title"),
            render.stat_cards(
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
                    render.sources_table(sources, label_prefixes(sources)),
                ],
                open=len(sources) <= 8,
                className="nd-section",
            ),
            render.panel("Per layer", render.graph(render.layer_distribution_figure(boxes), ids.LAYER_PLOTS)),
            polysemanticity.ranking_panel(app_state.units, label_prefixes(sources)),
            render.panel(
                "Units",
                html.P(
                    [
                        html.Span("Loading units…", id=ids.UNITS_COUNT, className="nd-strong"),
                        " · sort by a column, filter in the row under its header; click a unit to open it.",
                    ],
                    className="nd-muted",
                ),
                dcc.Store(id=ids.UNITS_DATA, data=units_payload(app_state.units, sources, metrics)),
                units_grid(metrics, multiple_kinds=len({s.kind for s in sources}) > 1),
            ),
        ]
    )


def units_grid(metrics: list[str], multiple_kinds: bool) -> dag.AgGrid:
    """The grid (rows arrive from ``units-data`` through a clientside callback), virtual scrolling."""
    number = {
        "filter": "agNumberColumnFilter",
        "type": "rightAligned",
        "minWidth": 90,
        "valueFormatter": {"function": "ndFixed(params.value, 3)"},
    }
    columns = [
        {
            "field": "ref",
            "headerName": "unit",
            "cellRenderer": "UnitLink",
            "pinned": "left",
            "minWidth": 110,
            "filter": "agTextColumnFilter",
            "comparator": {"function": "ndCompareUnits(nodeA, nodeB)"},
        },
        {"field": "source", "headerName": "source", "filter": "agTextColumnFilter", "minWidth": 100},
        {"field": "layer", "headerName": "layer", "filter": "agNumberColumnFilter", "minWidth": 80},
        *([{"field": "kind", "headerName": "kind", "minWidth": 100}] if multiple_kinds else []),
        *({**number, "field": m, "headerName": HEADERS.get(m, m.replace("_", " "))} for m in metrics),
    ]
    for column in columns:
        if column["field"] == "density":
            column["valueFormatter"] = {"function": "ndPercent(params.value)"}
    return dag.AgGrid(
        id=ids.UNITS_GRID,
        rowData=[],
        columnDefs=columns,
        defaultColDef={
            "sortable": True,
            "resizable": True,
            "filter": True,
            "floatingFilter": True,
            "suppressHeaderMenuButton": True,
        },
        dashGridOptions={
            "animateRows": False,
            "rowBuffer": 20,
            "suppressCellFocus": True,
            "rowHeight": 30,
            "headerHeight": 34,
        },
        columnSize="responsiveSizeToFit",
        style={"height": "560px", "width": "100%"},
        className="nd-grid",
    )


def register_callbacks(app: Dash) -> None:
    app.clientside_callback(
        ClientsideFunction(namespace="neurodash", function_name="fillUnitsGrid"),
        Output(ids.UNITS_COUNT, "children"),
        Input(ids.UNITS_DATA, "data"),
        State(ids.UNITS_GRID, "id"),
    )
