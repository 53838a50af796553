"""Heads (``routes.HEADS``, ``/heads``): every attention head of the store at a glance, a layer x head
heat map per score (a click opens the head) and a table of all heads sortable by every score."""

from __future__ import annotations

import dash_ag_grid as dag
import pandas as pd
from dash import Dash, Input, Output, dcc, html
from dash.exceptions import PreventUpdate

from neurodash.app import ids, routes, state
from neurodash.app.data import head_frame, head_grid, head_metrics
from neurodash.app.render import figures, tables, widgets
from neurodash.app.render.formats import metric_title

TITLE = "Heads · neurodash"
NO_HEADS = (
    "This store has no attention heads. `neurodash precompute` tracks them by default (every head of "
    "the layers it reads, in the same pass); a store made with --no-heads, or before heads existed, "
    "has none: run precompute again to add them."
)


def layout(**_query) -> html.Div:
    app_state = state.current()
    heads = head_frame(app_state.units)
    if heads.empty:
        return html.Div([html.H1("Heads", className="nd-title"), html.P(NO_HEADS, className="nd-heads-note")])
    metrics = head_metrics(heads, app_state.score_metrics) or ["max_act"]
    return html.Div(
        [
            html.H1("Heads", className="nd-title"),
            html.P(
                f"{len(heads):,} attention heads over {heads['layer'].nunique()} layers. "
                "Hover a cell for the head and its value; click it to open the head.",
                className="nd-muted",
            ),
            widgets.panel(
                "Scores by layer and head",
                html.Div(
                    [
                        html.Span("Score", className="nd-muted"),
                        dcc.Dropdown(
                            [{"label": metric_title(m), "value": m} for m in metrics],
                            metrics[0],
                            id=ids.HEADS_METRIC,
                            clearable=False,
                            className="nd-color-by",
                        ),
                    ],
                    className="nd-toolbar",
                ),
                figures.graph(heatmap(heads, metrics[0]), ids.HEADS_HEATMAP),
            ),
            widgets.panel("All heads", heads_grid(heads, metrics)),
        ]
    )


def heatmap(heads: pd.DataFrame, metric: str) -> dict:
    return figures.head_heatmap_figure(*head_grid(heads, metric), metric)


def heads_grid(heads: pd.DataFrame, metrics: list[str]) -> dag.AgGrid:
    """Every head, a link to its page, with its max output norm and every score."""
    columns = [
        {"field": "ref", "headerName": "head", "cellRenderer": "UnitLink", "pinned": "left", "minWidth": 90},
        {"field": "layer", "headerName": "layer", "filter": "agNumberColumnFilter", "minWidth": 70},
        {"field": "head", "headerName": "head #", "filter": "agNumberColumnFilter", "minWidth": 70},
        {**tables.NUMBER_COLUMN, "field": "max_act", "headerName": "max norm"},
        *(
            {**tables.NUMBER_COLUMN, "field": m, "headerName": metric_title(m)}
            for m in metrics
            if m != "max_act"
        ),
    ]
    rows = [
        {
            "ref": name,
            "path": routes.head_href(int(layer), int(unit)),
            "layer": int(layer),
            "head": int(unit),
            "max_act": round(float(max_act), 4),
            **{m: None if pd.isna(row[m]) else round(float(row[m]), 4) for m in metrics if m != "max_act"},
        }
        for (_, row), name, layer, unit, max_act in zip(
            heads.iterrows(), heads["name"], heads["layer"], heads["unit"], heads["max_act"]
        )
    ]
    return dag.AgGrid(
        id=ids.HEADS_GRID,
        rowData=rows,
        columnDefs=columns,
        defaultColDef={"sortable": True, "resizable": True, "filter": True, "suppressHeaderMenuButton": True},
        dashGridOptions=tables.GRID_OPTIONS,
        columnSize="responsiveSizeToFit",
        style={"height": "460px", "width": "100%"},
        className="nd-grid",
    )


def show_metric(metric: str | None) -> dict:
    if not metric:
        raise PreventUpdate
    heads = head_frame(state.current().units)
    if metric not in heads.columns:
        raise PreventUpdate
    return heatmap(heads, metric)


def open_head(click: dict | None) -> str:
    """A cell was clicked: the path of its head's page (the cell's x is the head, its y the layer)."""
    points = click.get("points") if isinstance(click, dict) else None
    point = points[0] if isinstance(points, list) and points else None
    layer, head = (point.get("y"), point.get("x")) if isinstance(point, dict) else (None, None)
    if not isinstance(layer, int) or not isinstance(head, int) or layer < 0 or head < 0:
        raise PreventUpdate
    return routes.head_href(layer, head)


def register_callbacks(app: Dash) -> None:
    app.callback(
        Output(ids.HEADS_HEATMAP, "figure"), Input(ids.HEADS_METRIC, "value"), prevent_initial_call=True
    )(show_metric)
    app.callback(
        Output(ids.NAV_LOCATION, "href", allow_duplicate=True),
        Input(ids.HEADS_HEATMAP, "clickData"),
        prevent_initial_call=True,
    )(open_head)
