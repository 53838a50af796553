"""The overview's table of every unit (AG Grid, virtual scrolling, rows built in the browser from a
columnar payload), and the download of the examples of the units its filter shows.

The payload is the same for every visit and large (MBs): the browser fetches it from its own address
(``routes.UNITS_TABLE_DATA``), built and compressed once per app, and keeps it (``cached_json``)."""

from __future__ import annotations

import dash
import dash_ag_grid as dag
import flask
from dash import ClientsideFunction, Dash, Input, NoUpdate, Output, State, dcc, html, no_update
from dash.exceptions import PreventUpdate

from neurodash.app import ids, routes, state
from neurodash.app.cached_json import CachedJson
from neurodash.app.data import plural, units_payload
from neurodash.app.render import tables, widgets
from neurodash.app.render.formats import FRACTION_METRICS, metric_title
from neurodash.app.state import AppState
from neurodash.errors import NeurodashError
from neurodash.export import FORMATS, HTML_MAX_EXAMPLES, Selection, export_bytes, resolve
from neurodash.storage import Store
from neurodash.storage.schema import STAT_COLUMNS

HEADERS = {"max_act": "max", "min_act": "min", "mean_act": "mean", "std_act": "std"}
HIDE_DEAD = {"density": {"filterType": "number", "type": "greaterThan", "filter": 0}}  # AG Grid filter model
# Heads' density is blank (see ``data.units_payload``): the dead-units filter keeps blanks.
DENSITY_FILTER = {"includeBlanksInGreaterThan": True, "includeBlanksInLessThan": True}
# The shown units' examples download in one response, held in memory: at most this many
# (about 1 KB each in CSV); larger selections go through `neurodash export`, which streams.
MAX_DOWNLOAD_EXAMPLES = 50_000
BUCKET_CHOICES = {
    "top": ("top",),
    "top and bottom": ("top", "bottom"),
    "quantiles": ("quantiles",),
    "all": (),
}


def layout(app_state: AppState) -> html.Section:
    """The panel: how many units, the grid (dead units filtered out at first) and the download bar.
    The same for every request (``AppState.once`` keeps it); the grid's rows come from ``table_data``."""
    sources = app_state.store.sources()
    n_dead = int((app_state.units["density"] == 0).sum())
    return widgets.panel(
        "Units",
        html.P(
            [
                html.Span("Loading units…", id=ids.UNITS_COUNT, className="nd-strong"),
                " · sort by a column, filter in the row under its header; click a unit to open it.",
                f" {n_dead:,} dead units (never fired) are hidden by the density filter: clear it to see them."
                if n_dead
                else "",
            ],
            className="nd-muted",
        ),
        dcc.Store(id=ids.UNITS_DATA, data={"url": dash.get_relative_path(routes.UNITS_TABLE_DATA)}),
        dcc.Store(id=ids.UNITS_START_FILTER, data=HIDE_DEAD if n_dead else {}),
        units_grid(table_metrics(app_state), multiple_kinds=len({s.kind for s in sources}) > 1),
        download_bar(bucket_choices(app_state.store)),
    )


def table_metrics(app_state: AppState) -> list[str]:
    """The table's columns of numbers: the statistics, then the store's scores."""
    return [*STAT_COLUMNS, *app_state.score_metrics]


def table_data(app_state: AppState) -> CachedJson:
    """Every unit's row of the table, columnar (``data.units_payload``), ready to send."""
    return CachedJson.of(units_payload(app_state.units, app_state.store.sources(), table_metrics(app_state)))


def send_table_data() -> flask.Response:
    """``routes.UNITS_TABLE_DATA``: the table's rows, built at the first request and kept."""
    return state.current().once(table_data).response(flask.request)


def units_grid(metrics: list[str], multiple_kinds: bool) -> dag.AgGrid:
    """The grid, virtual scrolling. Its rows (fetched from the address in ``units-data``), and its
    starting filter (``units-start-filter``), arrive through a clientside callback."""
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
        *(
            {**tables.NUMBER_COLUMN, "field": m, "headerName": HEADERS.get(m, m.replace("_", " "))}
            for m in metrics
        ),
    ]
    for column in columns:
        if column["field"] in metrics:
            column["headerTooltip"] = metric_title(column["field"])
        if column["field"] in FRACTION_METRICS:
            column["valueFormatter"] = {"function": "ndPercent(params.value)"}
            column["filterParams"] = DENSITY_FILTER
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
            "wrapHeaderText": True,  # long metric names wrap, never "kurto…"
            "autoHeaderHeight": True,
        },
        dashGridOptions={**tables.GRID_OPTIONS, "rowBuffer": 20},
        columnSize="responsiveSizeToFit",
        style={"height": "560px", "width": "100%"},
        className="nd-grid",
    )


def bucket_choices(store: Store) -> list[str]:
    """The bucket choices this store's examples allow."""
    have = set(store.bucket_names)
    need = {"top": {"top"}, "top and bottom": {"top", "bottom"}, "quantiles": set(), "all": set()}
    quantiles = any(b.startswith("q") for b in have)
    return [c for c in BUCKET_CHOICES if need[c] <= have and (c != "quantiles" or quantiles)]


def download_bar(choices: list[str]) -> html.Div:
    """Download the examples of the units the grid shows: which buckets, which format."""
    radio = {"inline": True, "className": "nd-radio", "inputClassName": "nd-radio-input"}
    return html.Div(
        [
            html.Span(id=ids.UNITS_SHOWN, className="nd-strong"),
            html.Span("· download their examples:", className="nd-muted"),
            dcc.RadioItems(choices, choices[0], id=ids.UNITS_DOWNLOAD_BUCKETS, **radio),
            html.Span("as", className="nd-muted"),
            dcc.RadioItems(
                [{"label": f.upper(), "value": f} for f in FORMATS],
                "csv",
                id=ids.UNITS_DOWNLOAD_FORMAT,
                **radio,
            ),
            html.Button("Download", id=ids.UNITS_DOWNLOAD_BUTTON, className="nd-button nd-step"),
            html.Span(id=ids.UNITS_DOWNLOAD_STATUS, role="status", className="nd-feedback"),
            dcc.Store(id=ids.UNITS_SELECTION),
            dcc.Download(id=ids.UNITS_DOWNLOAD),
        ],
        className="nd-downloads nd-units-download",
    )


def download_units(
    store: Store, units: list[str], fmt: str, choice: str
) -> tuple[dict | NoUpdate, html.Span]:
    """The examples of ``units`` (``source/index``) in the buckets of ``choice``, as a file of
    ``fmt`` for ``dcc.Download`` with what it holds; or ``no_update`` and why not (no unit, or more
    than ``MAX_DOWNLOAD_EXAMPLES`` examples)."""
    if fmt not in FORMATS or choice not in BUCKET_CHOICES:
        raise PreventUpdate
    if not units:
        return no_update, widgets.feedback("No unit is shown: loosen the filter.", ok=False)
    selection = Selection(units=tuple(units), buckets=BUCKET_CHOICES[choice])
    try:
        n = resolve(store, selection).n_examples
        what = f"{plural(len(units), 'unit')}, {plural(n, 'example')}"
        limit = HTML_MAX_EXAMPLES if fmt == "html" else MAX_DOWNLOAD_EXAMPLES
        if n > limit:
            raise NeurodashError(
                f"{what}: more than a {fmt.upper()} download holds ({limit:,}). Filter further, "
                "choose fewer buckets, or use `neurodash export`, which streams."
            )
        data = export_bytes(store, selection, fmt)
    except NeurodashError as e:
        return no_update, widgets.feedback(str(e), ok=False)
    return dcc.send_bytes(data, f"units-{choice.replace(' ', '-')}.{fmt}"), widgets.feedback(
        f"{what} as {fmt.upper()}", ok=True
    )


def on_download(selection: dict | None, fmt: str, choice: str):
    """The download button was pressed: ``selection`` holds the units the grid showed."""
    if not selection:
        raise PreventUpdate
    return download_units(state.current().store, selection["units"], fmt, choice)


def register_callbacks(app: Dash) -> None:
    app.server.add_url_rule(
        app.config.routes_pathname_prefix + routes.UNITS_TABLE_DATA.lstrip("/"),
        endpoint="neurodash-units-table",
        view_func=send_table_data,
    )
    app.clientside_callback(
        ClientsideFunction(namespace="neurodash", function_name="fillUnitsGrid"),
        Output(ids.UNITS_COUNT, "children"),
        Output(ids.UNITS_GRID, "filterModel"),
        Input(ids.UNITS_DATA, "data"),
        State(ids.UNITS_START_FILTER, "data"),
        State(ids.UNITS_GRID, "id"),
    )
    app.clientside_callback(
        ClientsideFunction(namespace="neurodash", function_name="countShownUnits"),
        Output(ids.UNITS_SHOWN, "children"),
        Input(ids.UNITS_GRID, "virtualRowData"),
    )
    app.clientside_callback(
        ClientsideFunction(namespace="neurodash", function_name="shownUnits"),
        Output(ids.UNITS_SELECTION, "data"),
        Input(ids.UNITS_DOWNLOAD_BUTTON, "n_clicks"),
        State(ids.UNITS_GRID, "virtualRowData"),
        prevent_initial_call=True,
    )
    app.callback(
        Output(ids.UNITS_DOWNLOAD, "data"),
        Output(ids.UNITS_DOWNLOAD_STATUS, "children"),
        Input(ids.UNITS_SELECTION, "data"),
        State(ids.UNITS_DOWNLOAD_FORMAT, "value"),
        State(ids.UNITS_DOWNLOAD_BUCKETS, "value"),
        prevent_initial_call=True,
    )(on_download)
