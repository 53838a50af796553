"""Text probe (``routes.PROBE``, ``/probe``): run the store's model on a text; which units fire most,
token by token, and where every head attends. The job and its results are ``panels/text_probe.py``
(attention: ``panels/probe_attention.py``)."""

from __future__ import annotations

from dash import Dash, html

from neurodash.app import state
from neurodash.app.panels import text_probe
from neurodash.units import NEURON

TITLE = "Text probe · neurodash"


def layout(**_query) -> html.Div:
    app_state = state.current()
    store = app_state.store
    sources = [s for s in store.sources() if s.kind == NEURON]
    config = {
        "model": store.meta.get("model"),
        "hooks": {s.hook: s.source_id for s in sources},
        "keep_bos": app_state.keep_bos,
        "attention": True,
    }
    return html.Div(
        [
            html.H1("Text probe", className="nd-title"),
            html.P(
                f"Runs {config['model']} on your text and reads the {len(sources)} neuron sources of this store. "
                "Units are ranked by their activation as a fraction of their max over the corpus; "
                "every head's attention is shown below them.",
                className="nd-muted",
            ),
            *text_probe.layout(config),
        ]
    )


def register_callbacks(app: Dash, unit_max: dict) -> None:
    """``unit_max`` is captured for the forked background job (see ``text_probe.register_callbacks``)."""
    text_probe.register_callbacks(app, unit_max)
