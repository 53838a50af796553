"""The frame around every page: the top bar (Overview, Heads, Probe, Sets, Lab, the jump box) and its callback."""

from __future__ import annotations

import dash
from dash import Dash, Input, NoUpdate, Output, State, dcc, html, no_update

from neurodash.app import ids, routes, state
from neurodash.app.render import highlights
from neurodash.errors import NeurodashError
from neurodash.units import parse_ref


def layout(store_name: str, model: str) -> html.Div:
    frame = html.Div(
        [
            dcc.Location(id=ids.NAV_LOCATION, refresh="callback-nav"),
            html.Header(
                [
                    dcc.Link("neurodash", href=routes.OVERVIEW, className="nd-brand"),
                    html.Nav(
                        [
                            dcc.Link("Overview", href=routes.OVERVIEW),
                            dcc.Link("Heads", href=routes.HEADS),
                            dcc.Link("Probe", href=routes.PROBE),
                            dcc.Link("Sets", href=routes.set_href()),
                            dcc.Link("Lab", href=routes.LAB),
                        ],
                        className="nd-links",
                    ),
                    html.Div(
                        [
                            dcc.Input(
                                id=ids.JUMP_INPUT,
                                type="text",
                                placeholder="Jump to L12N345, or find a token or words   ( / )",
                                debounce=True,
                                autoComplete="off",
                                spellCheck=False,
                                className="nd-jump-input",
                            ),
                            html.Span(id=ids.JUMP_ERROR, className="nd-jump-error"),
                        ],
                        className="nd-jump",
                    ),
                    html.Span(f"{model} · {store_name}", className="nd-store-name"),
                ],
                className="nd-topbar",
            ),
            html.Main(dash.page_container, className="nd-main"),
        ]
    )
    return highlights.with_token_scale(frame)


def jump(text: str | None) -> tuple[str | NoUpdate, str]:
    """(path to go to or ``no_update``, error message) for what was typed in the jump box: a unit's page
    for a unit reference, the overview's searches for anything else (by token and by meaning)."""
    if text is None or not text.strip():
        return no_update, ""
    if not looks_like_ref(text.strip()):
        return routes.search_href(text), ""
    try:
        ref = parse_ref(text.strip(), state.current().store.sources())
    except NeurodashError as e:
        return no_update, str(e)
    return routes.unit_href(ref), ""


def looks_like_ref(text: str) -> bool:
    """Whether ``text`` is meant as a unit reference (``L12N3``, ``L3F7``, ``source/index``)."""
    try:
        parse_ref(text)
    except NeurodashError:
        return False
    return True


def on_jump(_submits: int | None, text: str | None) -> tuple[str | NoUpdate, str, str | NoUpdate]:
    """Go, and clear the box when it went somewhere (an error keeps the text to correct)."""
    href, error = jump(text)
    return href, error, ("" if error == "" and href is not no_update else no_update)


def register_callbacks(app: Dash) -> None:
    app.callback(
        Output(ids.NAV_LOCATION, "href"),
        Output(ids.JUMP_ERROR, "children"),
        Output(ids.JUMP_INPUT, "value"),
        Input(ids.JUMP_INPUT, "n_submit"),
        State(ids.JUMP_INPUT, "value"),
        prevent_initial_call=True,
    )(on_jump)
