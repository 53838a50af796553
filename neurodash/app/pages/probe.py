"""Text probe (``routes.PROBE``, ``/probe``, a saved run at ``/probe?run=KEY``): run the store's model
on a text; which neurons and SAE features fire most, token by token, and where every head attends. The job and its results are ``panels/text_probe.py``
(attention: ``panels/probe_attention.py``)."""

from __future__ import annotations

from dash import Dash, html

from neurodash.app import state
from neurodash.app.data import plural
from neurodash.app.panels import text_probe
from neurodash.units import NEURON, SAE_FEATURE

TITLE = "Text probe · neurodash"


def layout(run: str | None = None, **_query) -> html.Div:
    app_state = state.current()
    store = app_state.store
    sources = [s for s in store.sources() if s.kind == NEURON]
    saes = [s.source_id for s in store.sources() if s.kind == SAE_FEATURE]
    config = {
        "model": store.meta.get("model"),
        "hooks": {s.hook: s.source_id for s in sources},
        "saes": saes,
        "keep_bos": app_state.keep_bos,
        "attention": True,
    }
    read = f"the {len(sources)} neuron sources" + (f" and {plural(len(saes), 'SAE')}" if saes else "")
    return html.Div(
        [
            html.H1("Text probe", className="nd-title"),
            html.P(
                f"Runs {config['model']} on your text and reads {read} of this store. "
                "Units are ranked by their activation as a fraction of their max over the corpus; "
                "every head's attention is shown below them.",
                className="nd-muted",
            ),
            *text_probe.layout(config, run),
        ]
    )


def register_callbacks(app: Dash, unit_max: dict) -> None:
    """``unit_max`` is captured for the forked background job (see ``text_probe.register_callbacks``)."""
    text_probe.register_callbacks(app, unit_max)
