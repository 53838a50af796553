"""Helpers for the app's tests: walk Dash component trees."""

from __future__ import annotations


def texts(component) -> list[str]:
    """Every string child in a component tree, depth first."""
    if isinstance(component, str):
        return [component]
    if isinstance(component, list | tuple):
        return [t for child in component for t in texts(child)]
    children = getattr(component, "children", None)
    if children is None:
        return []
    if not isinstance(children, list | tuple):
        children = [children]
    return [t for child in children for t in texts(child)]


def find(component, predicate) -> list:
    """Every component in the tree (the root included) for which ``predicate`` holds."""
    found = [component] if predicate(component) else []
    children = getattr(component, "children", None)
    if isinstance(children, list | tuple):
        for child in children:
            found += find(child, predicate)
    elif children is not None and not isinstance(children, str):
        found += find(children, predicate)
    return found


def by_id(component, component_id):
    return find(component, lambda c: getattr(c, "id", None) == component_id)[0]


def token_rows(component) -> list[dict]:
    """The payload of every token row (``render.token_row``) in the tree: tokens, acts, max_abs, marked."""
    import json

    rows = find(component, lambda c: getattr(c, "className", None) == "nd-tokens")
    return [json.loads(getattr(row, "data-tokens")) for row in rows]


def units_table_payload(app, page) -> dict:
    """The overview's units table as the browser fetches it: from the address in ``page``'s units-data."""
    from neurodash.app import ids

    url = by_id(page, ids.UNITS_DATA).data["url"]
    response = app.server.test_client().get(url)
    assert response.status_code == 200, response.status_code
    return response.get_json()
