"""The unit page's downloads: every example of the unit, as a file of each export format."""

from __future__ import annotations

from dash import ALL, Dash, Input, Output, ctx, dcc, html
from dash.exceptions import PreventUpdate

from neurodash.app import current_unit, ids, state
from neurodash.app.render import widgets
from neurodash.storage import Store
from neurodash.units import UnitRef

FORMATS = ("csv", "jsonl", "parquet", "html")


def layout() -> html.Div:
    return widgets.download_buttons(FORMATS)


def download_examples(store: Store, ref: UnitRef | None, fmt: str) -> dict:
    """Every example of unit ``ref`` as a file of ``fmt``, for ``dcc.Download``."""
    from neurodash.export import Selection, export_bytes

    if ref is None or fmt not in FORMATS or not store.has_unit(ref):
        raise PreventUpdate
    data = export_bytes(store, Selection(units=(str(ref),)), fmt)
    return dcc.send_bytes(data, f"{ref.source_id}-{ref.unit}.{fmt}")


def on_download(clicks: list[int | None], unit: object) -> dict:
    if not any(clicks) or not isinstance(ctx.triggered_id, dict):
        raise PreventUpdate
    return download_examples(state.current().store, current_unit.read(unit), ctx.triggered_id["fmt"])


def register_callbacks(app: Dash) -> None:
    app.callback(
        Output(ids.DOWNLOAD, "data"),
        Input({"type": ids.DOWNLOAD_FORMAT, "fmt": ALL}, "n_clicks"),
        current_unit.state(),
        prevent_initial_call=True,
    )(on_download)
