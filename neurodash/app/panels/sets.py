"""Curated sets in the app. On the unit page: add one example (its "+") or all top examples to a
named set. On the sets page (``pages/sets.py``): the renderers of sets and their examples (each
with a "×" that removes it).

The set is chosen by name (an input with a datalist of the existing sets; a new name makes a new
set), with an optional note. Adding is idempotent: an example already in the set stays once, and
gets the new note if one is given. The sets live in the app-owned file beside the store
(``neurodash.sets``); its SQL stays there.
"""

from __future__ import annotations

from collections.abc import Sequence

from dash import ALL, Dash, Input, Output, State, ctx, dcc, html
from dash.exceptions import PreventUpdate

from neurodash.app import current_unit, ids, render, routes, state
from neurodash.app.data import plural
from neurodash.colors import value_color
from neurodash.errors import NeurodashError
from neurodash.storage import Store
from neurodash.storage.sets import MAX_NAME, ExampleSets, SetInfo
from neurodash.units import UnitRef

TOP = "top"


def layout() -> html.Div:
    """The bar above the unit's examples: set name, note, "add all top examples", feedback."""
    return html.Div(
        [
            html.Span("Add to set", className="nd-muted"),
            dcc.Input(
                id=ids.SET_NAME,
                type="text",
                list=ids.SET_NAMES,
                placeholder="set name (new or existing)",
                maxLength=MAX_NAME,
                autoComplete="off",
                persistence=True,  # the same set from one unit to the next
                persistence_type="session",
                className="nd-input",
            ),
            html.Datalist(id=ids.SET_NAMES),
            dcc.Input(
                id=ids.SET_NOTE,
                type="text",
                placeholder="note (optional)",
                className="nd-input nd-input-wide",
            ),
            html.Button("Add all top examples", id=ids.SET_ADD_TOP, className="nd-button nd-step"),
            html.Span("or + on an example", className="nd-muted"),
            html.Span(id=ids.SET_FEEDBACK, role="status", className="nd-feedback"),
        ],
        className="nd-set-bar",
    )


def name_options(sets: ExampleSets) -> list[html.Option]:
    """The existing sets, for the name's datalist (none when the sets file cannot be read)."""
    try:
        return [html.Option(value=s.name) for s in sets.all()]
    except NeurodashError:
        return []


def size(sets: ExampleSets, name: str) -> int:
    """How many examples the set has (0 if there is no such set)."""
    return next((s.n_examples for s in sets.all() if s.name == name), 0)


def add_to_set(
    sets: ExampleSets,
    store: Store,
    ref: UnitRef,
    name: str | None,
    note: str | None,
    example: tuple[str, int] | None = None,
) -> str:
    """Add the unit's example ``(bucket, rank)``, or every top example, to set ``name``; what was
    done, in words. A ``NeurodashError`` for a missing name or example, or an unusable sets file."""
    name, note = (name or "").strip(), (note or "").strip() or None
    if not name:
        raise NeurodashError("type a set name first (a new name makes a new set)")
    before = size(sets, name)
    if example is None:
        given = sets.add_top(store, name, ref, note)
    else:
        sets.add_example(store, name, ref, bucket=example[0], rank=example[1], note=note)
        given = 1
    added = size(sets, name) - before
    if added == given:
        return f"added {plural(added, 'example')} to {name!r}"
    there = given - added
    noted = ", with the new note" if note else ""
    return (
        f"added {plural(added, 'example')} to {name!r}: "
        f"{plural(there, 'example')} {'was' if there == 1 else 'were'} there already{noted}"
    )


def feedback(message: str, ok: bool) -> html.Span:
    """A message as text (it may quote a user's set name)."""
    return html.Span(message, className="nd-ok" if ok else "nd-error")


def fill_names(_id: str) -> list[html.Option]:
    return name_options(state.current().sets)


def on_add(_top: int | None, _examples: list, name: str | None, note: str | None, unit: object):
    """A "+" or "Add all top examples" was pressed on the page of the current ``unit``: add, and say
    what was done."""
    if not ctx.triggered or not ctx.triggered[0]["value"]:  # new buttons appearing, not a click
        raise PreventUpdate
    app_state = state.current()
    ref = current_unit.read(unit)
    if ref is None or not app_state.store.has_unit(ref):
        raise PreventUpdate
    which = ctx.triggered_id
    example = (which["bucket"], int(which["rank"])) if isinstance(which, dict) else None
    try:
        message = feedback(add_to_set(app_state.sets, app_state.store, ref, name, note, example), ok=True)
    except NeurodashError as e:
        message = feedback(str(e), ok=False)
    return message, name_options(app_state.sets)


def register_callbacks(app: Dash) -> None:
    app.callback(Output(ids.SET_NAMES, "children"), Input(ids.SET_NAMES, "id"))(fill_names)
    app.callback(
        Output(ids.SET_FEEDBACK, "children"),
        Output(ids.SET_NAMES, "children", allow_duplicate=True),
        Input(ids.SET_ADD_TOP, "n_clicks"),
        Input({"type": ids.SET_ADD_EXAMPLE, "bucket": ALL, "rank": ALL}, "n_clicks"),
        State(ids.SET_NAME, "value"),
        State(ids.SET_NOTE, "value"),
        current_unit.state(),
        prevent_initial_call=True,
    )(on_add)


# --- the sets page (pages/sets.py) ----------------------------------------------------------
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
            render.download_buttons(tuple(formats), ids.SETS_DOWNLOAD_FORMAT, ids.SETS_DOWNLOAD),
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
                    render.unit_link(label, ref, className="nd-set-unit"),
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
                    render.token_row(row["tokens"], row["acts"], max_abs, row["pos"] - row["start"]),
                ],
                className="nd-example",
            ),
        ],
        className="nd-set-example",
    )
