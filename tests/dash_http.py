"""What a browser posts to a served dashboard, for the tests and benchmarks that talk to one over plain
HTTP (``tests/app/test_server.py``, ``benchmarks/load.py``)."""

from __future__ import annotations

import json


def pages_callback(pathname: str, search: str = "") -> bytes:
    """The body the browser posts to get a page's layout (Dash pages' own callback)."""
    return json.dumps(
        {
            "output": ".._pages_content.children..._pages_store.data..",
            "outputs": [
                {"id": "_pages_content", "property": "children"},
                {"id": "_pages_store", "property": "data"},
            ],
            "inputs": [
                {"id": "_pages_location", "property": "pathname", "value": pathname},
                {"id": "_pages_location", "property": "search", "value": search},
            ],
            "changedPropIds": ["_pages_location.pathname", "_pages_location.search"],
            "parsedChangedPropsIds": ["_pages_location.pathname", "_pages_location.search"],
        }
    ).encode()
