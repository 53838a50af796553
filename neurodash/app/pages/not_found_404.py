"""The page for any path no other page claims (Dash pages looks it up by this module's name)."""

from __future__ import annotations

from dash import html

from neurodash.app.render import widgets

TITLE = "Not found · neurodash"


def layout(**_query) -> html.Div:
    return widgets.not_found("There is no page at this address.")
