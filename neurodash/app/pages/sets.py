"""Curated sets (``/sets``, one set at ``/sets?name=...``): list, view, rename, delete, download,
and remove one example (its "×").

Sets are added to from the unit page (``sets_panel``); they live in the app-owned file beside
the store, never in the read-only store.
"""

from __future__ import annotations

import re

from dash import ALL, Dash, Input, Output, State, ctx, dcc, html, no_update
from dash.exceptions import PreventUpdate

from neurodash.app import ids, render, routes, state
from neurodash.app.data import label_prefixes, plural, unit_label, unit_magnitudes
from neurodash.app.panels import sets as sets_panel
from neurodash.app.state import AppState
from neurodash.errors import NeurodashError
from neurodash.export import FORMATS, Selection, examples_frame, export_bytes
from neurodash.storage import Store
from neurodash.storage.sets import ExampleSets, SetInfo, sets_path
from neurodash.units import UnitRef

TITLE = "Curated sets · neurodash"
VIEW_MAX = 500  # examples shown on a set's page; downloads hold them all


def layout(name: str | list[str] | None = None, **_query) -> html.Div:
    app_state = state.current()
    name = routes.set_name(name)
    path = app_state.sets.path
    where = f"{path.name} beside the store" if path == sets_path(app_state.store.path) else str(path)
    intro = html.P(
        f"Named lists of examples with notes, kept in {where}. Add to them from a unit page.",
        className="nd-muted",
    )
    return html.Div(
        [
            html.H1("Curated sets", className="nd-title"),
            intro,
            html.Div(page_body(app_state, name), id=ids.SETS_BODY),
        ]
    )


def page_body(app_state: AppState, name: str | None, message: html.Span | None = None) -> list:
    """The sets table and set ``name``'s page (with ``message`` beside its actions), or why not."""
    try:
        infos = app_state.sets.all()
    except NeurodashError as e:
        return [sets_panel.feedback(str(e), False)]
    chosen = next((s for s in infos if s.name == name), None)
    if name is None:
        detail = None
    elif chosen is None:
        detail = html.P(["There is no set named ", html.Code(name), "."], className="nd-notfound-message")
    else:
        detail = set_detail(app_state, chosen, message)
    return [render.panel("Sets", sets_panel.sets_table(infos, name)), detail]


def set_detail(app_state: AppState, info: SetInfo, message: html.Span | None = None) -> html.Section:
    """A set's actions and its first ``VIEW_MAX`` examples, in store order."""
    store = app_state.store
    body: list = []
    if info.n_examples == 0:
        body.append(html.P("This set is empty.", className="nd-muted"))
    else:
        try:
            frame = examples_frame(store, Selection(set_name=info.name), sets_file=app_state.sets.path)
        except NeurodashError as e:
            frame = None
            body.append(sets_panel.feedback(str(e), ok=False))
        if frame is not None:
            body += set_examples(frame.head(VIEW_MAX), app_state, store)
            if len(frame) > VIEW_MAX:
                body.append(
                    html.P(
                        f"The first {VIEW_MAX} of {len(frame):,} examples; download for all.",
                        className="nd-muted",
                    )
                )
    return html.Section(
        [
            html.H2(info.name, className="nd-set-title"),
            html.P(
                f"{plural(info.n_examples, 'example')} · created {info.created_at:%Y-%m-%d %H:%M} UTC",
                className="nd-muted",
            ),
            sets_panel.set_actions(info, FORMATS, message),
            html.Div(
                id=ids.TOKEN_INSPECTOR,
                className="nd-inspector",
                children="Hover a token to see its exact value.",
            ),
            *body,
        ],
        className="nd-panel",
    )


def set_examples(frame, app_state: AppState, store: Store) -> list[html.Div]:
    prefixes = label_prefixes(store.sources())
    magnitudes = unit_magnitudes(app_state.units, frame)
    return [
        sets_panel.set_example_row(
            row, unit_label(UnitRef(row["source_id"], int(row["unit_index"])), prefixes), mag
        )
        for row, mag in zip(frame.to_dict("records"), magnitudes, strict=True)
    ]


# --- actions (plain functions, the callbacks call them) ---------------------------------------
def rename(sets: ExampleSets, old: str | None, new: str | None) -> tuple[str, html.Span | str]:
    """Rename set ``old``: (the renamed set's page, "") or (``no_update``, what went wrong)."""
    if old is None:
        raise PreventUpdate
    try:
        sets.rename(old, new or "")
    except NeurodashError as e:
        return no_update, sets_panel.feedback(str(e), ok=False)
    return routes.set_href(new.strip()), ""


def delete(sets: ExampleSets, name: str | None) -> tuple[str, html.Span | str]:
    """Delete set ``name``: (the sets page, "") or (``no_update``, what went wrong)."""
    if name is None:
        raise PreventUpdate
    try:
        sets.delete(name)
    except NeurodashError as e:
        return no_update, sets_panel.feedback(str(e), ok=False)
    return routes.set_href(), ""


def remove_example(app_state: AppState, name: str | None, ref: UnitRef, bucket: str, rank: int) -> html.Span:
    """Remove one example from set ``name``; what was done, in words."""
    if name is None:
        raise PreventUpdate
    sets = app_state.sets
    what = f"{unit_label(ref, label_prefixes(app_state.store.sources()))} {bucket} #{rank}"
    try:
        before = sets_panel.size(sets, name)
        sets.remove(name, ref, bucket, rank)
        removed = before - sets_panel.size(sets, name)
    except NeurodashError as e:
        return sets_panel.feedback(str(e), ok=False)
    if not removed:
        return sets_panel.feedback(f"{what} was not in {name!r}", ok=False)
    return sets_panel.feedback(f"removed {what} from {name!r}", ok=True)


def file_name(name: str, fmt: str) -> str:
    """A file name for set ``name``: its letters, digits, dots and dashes."""
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '-', name).strip('-.') or 'set'}.{fmt}"


def download(
    store: Store, sets: ExampleSets, name: str | None, fmt: str
) -> tuple[dict | object, html.Span | str]:
    """The set's examples as a file of ``fmt`` for ``dcc.Download``, or ``no_update`` and why not."""
    if name is None or fmt not in FORMATS:
        raise PreventUpdate
    try:
        data = export_bytes(store, Selection(set_name=name), fmt, sets_file=sets.path)
    except NeurodashError as e:
        return no_update, sets_panel.feedback(str(e), ok=False)
    return dcc.send_bytes(data, file_name(name, fmt)), ""


def on_change(
    _rename: int | None, _submit: int | None, _delete: int | None, new: str | None, name: str | None
):
    """Rename (button or Enter) or delete (confirmed) the set shown."""
    if not ctx.triggered or not ctx.triggered[0]["value"]:
        raise PreventUpdate
    sets = state.current().sets
    return delete(sets, name) if ctx.triggered_id == ids.SETS_DELETE else rename(sets, name, new)


def on_remove(_clicks: list[int | None], name: str | None) -> list:
    """A "×" was pressed: remove its example, then draw the sets and the set again."""
    which = ctx.triggered_id
    if not ctx.triggered or not ctx.triggered[0]["value"] or not isinstance(which, dict):
        raise PreventUpdate  # new buttons appearing, not a click
    app_state = state.current()
    ref = UnitRef(which["source"], int(which["unit"]))
    message = remove_example(app_state, name, ref, which["bucket"], int(which["rank"]))
    return page_body(app_state, name, message)


def on_download(clicks: list[int | None], name: str | None):
    if not any(clicks) or not isinstance(ctx.triggered_id, dict):
        raise PreventUpdate
    app_state = state.current()
    return download(app_state.store, app_state.sets, name, ctx.triggered_id["fmt"])


def register_callbacks(app: Dash) -> None:
    app.callback(
        Output(ids.NAV_LOCATION, "href", allow_duplicate=True),
        Output(ids.SETS_FEEDBACK, "children"),
        Input(ids.SETS_RENAME, "n_clicks"),
        Input(ids.SETS_RENAME_INPUT, "n_submit"),
        Input(ids.SETS_DELETE, "submit_n_clicks"),
        State(ids.SETS_RENAME_INPUT, "value"),
        State(ids.SETS_SELECTED, "data"),
        prevent_initial_call=True,
    )(on_change)
    app.callback(
        Output(ids.SETS_BODY, "children"),
        Input(
            {"type": ids.SETS_REMOVE_EXAMPLE, "source": ALL, "unit": ALL, "bucket": ALL, "rank": ALL},
            "n_clicks",
        ),
        State(ids.SETS_SELECTED, "data"),
        prevent_initial_call=True,
    )(on_remove)
    app.callback(
        Output(ids.SETS_DOWNLOAD, "data"),
        Output(ids.SETS_FEEDBACK, "children", allow_duplicate=True),
        Input({"type": ids.SETS_DOWNLOAD_FORMAT, "fmt": ALL}, "n_clicks"),
        State(ids.SETS_SELECTED, "data"),
        prevent_initial_call=True,
    )(on_download)
