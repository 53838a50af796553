"""The sets page's panel: every set (a table linking to each), and the set shown: its examples (each
with a "×" that removes it), rename, delete (confirmed first) and download.

The sets live in the app-owned file beside the store, never in the read-only store.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from dash import ALL, Dash, Input, NoUpdate, Output, State, ctx, dcc, html, no_update
from dash.exceptions import PreventUpdate

from neurodash.app import ids, routes, state
from neurodash.app.data import label_prefixes, plural, unit_label, unit_magnitudes
from neurodash.app.panels.sets import size
from neurodash.app.render import highlights, widgets
from neurodash.app.state import AppState
from neurodash.colors import value_color
from neurodash.errors import NeurodashError
from neurodash.export import FORMATS, Selection, examples_frame, export_bytes
from neurodash.storage import Store
from neurodash.storage.sets import MAX_NAME, ExampleSets, SetInfo
from neurodash.units import UnitRef

VIEW_MAX = 500  # examples shown on a set's page; downloads hold them all


def page_body(app_state: AppState, name: str | None, message: html.Span | None = None) -> list:
    """The sets table and set ``name``'s page (with ``message`` beside its actions), or why not."""
    try:
        infos = app_state.sets.all()
    except NeurodashError as e:
        return [widgets.feedback(str(e), False)]
    chosen = next((s for s in infos if s.name == name), None)
    if name is None:
        detail = None
    elif chosen is None:
        detail = html.P(["There is no set named ", html.Code(name), "."], className="nd-notfound-message")
    else:
        detail = set_detail(app_state, chosen, message)
    return [widgets.panel("Sets", sets_table(infos, name)), detail]


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
            body.append(widgets.feedback(str(e), ok=False))
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
            set_actions(info, FORMATS, message),
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
        set_example_row(row, unit_label(UnitRef(row["source_id"], int(row["unit_index"])), prefixes), mag)
        for row, mag in zip(frame.to_dict("records"), magnitudes, strict=True)
    ]


def sets_table(infos: Sequence[SetInfo], selected: str | None) -> html.Table | html.P:
    """Every set: its name (a link to its page), size and creation time."""
    if not infos:
        return html.P(
            "No sets yet. On a unit page, type a set name, then press + on an example or "
            "“Add all top examples”.",
            className="nd-muted",
        )
    rows = [
        html.Tr(
            [
                html.Td(dcc.Link(s.name, href=routes.set_href(s.name), className="nd-set-link")),
                html.Td(f"{s.n_examples:,}", className="nd-num"),
                html.Td(f"{s.created_at:%Y-%m-%d %H:%M}", className="nd-num"),
            ],
            className="nd-selected" if s.name == selected else None,
        )
        for s in infos
    ]
    head = html.Thead(
        html.Tr(
            [
                html.Th("set"),
                html.Th("examples", className="nd-num"),
                html.Th("created (UTC)", className="nd-num"),
            ]
        )
    )
    return html.Table([head, html.Tbody(rows)], className="nd-table nd-sets-table")


def set_actions(info: SetInfo, formats: Sequence[str], message: html.Span | None = None) -> html.Div:
    """Rename, delete (confirmed first), download in each format, and what came of it (``message``)."""
    return html.Div(
        [
            dcc.Input(
                id=ids.SETS_RENAME_INPUT,
                type="text",
                value=info.name,
                maxLength=MAX_NAME,
                className="nd-input",
            ),
            html.Button("Rename", id=ids.SETS_RENAME, className="nd-button nd-step"),
            dcc.ConfirmDialogProvider(
                html.Button("Delete", className="nd-button nd-step nd-danger"),
                id=ids.SETS_DELETE,
                message=f"Delete the set {info.name!r} and its {plural(info.n_examples, 'example')}? "
                "This cannot be undone.",
            ),
            widgets.download_buttons(tuple(formats), ids.SETS_DOWNLOAD_FORMAT, ids.SETS_DOWNLOAD),
            html.Span(message, id=ids.SETS_FEEDBACK, role="status", className="nd-feedback"),
            dcc.Store(id=ids.SETS_SELECTED, data=info.name),
        ],
        className="nd-set-actions",
    )


def remove_example_button(ref: UnitRef, bucket: str, rank: int) -> html.Button:
    return html.Button(
        "×",
        id={
            "type": ids.SETS_REMOVE_EXAMPLE,
            "source": ref.source_id,
            "unit": ref.unit,
            "bucket": bucket,
            "rank": rank,
        },
        className="nd-add nd-remove",
        title="remove this example from the set",
    )


def set_example_row(row: dict, label: str, max_abs: float) -> html.Div:
    """One example of a set: a "×" that removes it, its unit (a link), bucket and rank, note, value
    and tokens."""
    ref = UnitRef(row["source_id"], int(row["unit_index"]))
    value = row["value"]
    return html.Div(
        [
            html.Div(
                [
                    remove_example_button(ref, row["bucket"], int(row["rank"])),
                    widgets.unit_link(label, ref, className="nd-set-unit"),
                    html.Span(f"{row['bucket']} #{row['rank']}", className="nd-muted"),
                    html.Span(row["note"], className="nd-note") if row.get("note") else None,
                ],
                className="nd-set-meta",
            ),
            html.Div(
                [
                    html.Span(
                        f"{value:+.3f}",
                        className="nd-value",
                        style={"color": value_color(value)},
                        title=f"sequence {row['seq_id']}, token {row['pos']}",
                    ),
                    highlights.token_row(row["tokens"], row["acts"], max_abs, row["pos"] - row["start"]),
                ],
                className="nd-example",
            ),
        ],
        className="nd-set-example",
    )


# --- actions (plain functions, the callbacks call them) ---------------------------------------
def rename(sets: ExampleSets, old: str | None, new: str | None) -> tuple[str | NoUpdate, html.Span | str]:
    """Rename set ``old``: (the renamed set's page, "") or (``no_update``, what went wrong)."""
    if old is None:
        raise PreventUpdate
    try:
        sets.rename(old, new or "")
    except NeurodashError as e:
        return no_update, widgets.feedback(str(e), ok=False)
    return routes.set_href((new or "").strip()), ""


def delete(sets: ExampleSets, name: str | None) -> tuple[str | NoUpdate, html.Span | str]:
    """Delete set ``name``: (the sets page, "") or (``no_update``, what went wrong)."""
    if name is None:
        raise PreventUpdate
    try:
        sets.delete(name)
    except NeurodashError as e:
        return no_update, widgets.feedback(str(e), ok=False)
    return routes.set_href(), ""


def remove_example(app_state: AppState, name: str | None, ref: UnitRef, bucket: str, rank: int) -> html.Span:
    """Remove one example from set ``name``; what was done, in words."""
    if name is None:
        raise PreventUpdate
    sets = app_state.sets
    what = f"{unit_label(ref, label_prefixes(app_state.store.sources()))} {bucket} #{rank}"
    try:
        before = size(sets, name)
        sets.remove(name, ref, bucket, rank)
        removed = before - size(sets, name)
    except NeurodashError as e:
        return widgets.feedback(str(e), ok=False)
    if not removed:
        return widgets.feedback(f"{what} was not in {name!r}", ok=False)
    return widgets.feedback(f"removed {what} from {name!r}", ok=True)


def file_name(name: str, fmt: str) -> str:
    """A file name for set ``name``: its letters, digits, dots and dashes."""
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '-', name).strip('-.') or 'set'}.{fmt}"


def download(
    store: Store, sets: ExampleSets, name: str | None, fmt: str
) -> tuple[dict | NoUpdate, html.Span | str]:
    """The set's examples as a file of ``fmt`` for ``dcc.Download``, or ``no_update`` and why not."""
    if name is None or fmt not in FORMATS:
        raise PreventUpdate
    try:
        data = export_bytes(store, Selection(set_name=name), fmt, sets_file=sets.path)
    except NeurodashError as e:
        return no_update, widgets.feedback(str(e), ok=False)
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
