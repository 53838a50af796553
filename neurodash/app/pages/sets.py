"""Curated sets (``routes.SETS``; one set at ``routes.set_href(name)``, ``/sets?name=...``): list,
view, rename, delete, download, and remove one example (``panels/set_manager.py``).

Sets are added to from the unit page (``panels/sets.py``); they live in the app-owned file beside
the store, never in the read-only store.
"""

from __future__ import annotations

from dash import Dash, html

from neurodash.app import ids, routes, state
from neurodash.app.panels import set_manager
from neurodash.storage.sets import sets_path

TITLE = "Curated sets · neurodash"


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
            html.Div(set_manager.page_body(app_state, name), id=ids.SETS_BODY),
        ]
    )


def register_callbacks(app: Dash) -> None:
    set_manager.register_callbacks(app)
