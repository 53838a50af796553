"""The unit page's curated-sets bar: add one example (its "+") or all top examples to a named set.
The sets page's panel is ``set_manager``.

The set is chosen by name (an input with a datalist of the existing sets; a new name makes a new
set), with an optional note. Adding is idempotent: an example already in the set stays once, and
gets the new note if one is given. The sets live in the app-owned file beside the store
(``neurodash.storage.sets``); its SQL stays there.
"""

from __future__ import annotations

from dash import ALL, Dash, Input, Output, State, ctx, dcc, html
from dash.exceptions import PreventUpdate

from neurodash.app import current_unit, ids, state
from neurodash.app.data import plural
from neurodash.app.render import widgets
from neurodash.errors import NeurodashError
from neurodash.storage import Store
from neurodash.storage.sets import MAX_NAME, ExampleSets
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
        message = widgets.feedback(
            add_to_set(app_state.sets, app_state.store, ref, name, note, example), ok=True
        )
    except NeurodashError as e:
        message = widgets.feedback(str(e), ok=False)
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
