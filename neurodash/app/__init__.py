"""The Dash app: ``create_app(store_path)`` and ``serve(store_path, host, port)``."""

from __future__ import annotations

import os
from pathlib import Path

from neurodash.store import Store


def create_app(store_path: str | os.PathLike):
    """A Dash app over one store, opened read-only (placeholder until the dashboard lands)."""
    import dash
    from dash import html

    store = Store(store_path)
    app = dash.Dash(__name__, title="neurodash")
    app.layout = html.Div([
        html.H1("neurodash"),
        html.Ul([html.Li(f"{s.source_id}: {s.hook} ({s.n_units} units)") for s in store.sources()]),
    ])
    return app


def serve(store_path: str | os.PathLike, host: str = "127.0.0.1", port: int = 8050, debug: bool = False) -> None:
    app = create_app(Path(store_path))
    print(f"neurodash: serving {store_path} on http://{host}:{port}")
    app.run(host=host, port=port, debug=debug)
