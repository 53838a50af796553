"""The unit page's "Try your own text": run the store's model on a text and show this unit's activation
at every token, coloured on the unit's own scale (its largest magnitude over the corpus, as its examples
are), the value at the cursor. A background job on the app's DiskcacheManager, as the maximization's:
the forked job has the model worker run it (``model_worker``: the model loaded once per server; torch
never in the server)."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable

from dash import Dash, Input, NoUpdate, Output, State, dcc, html, no_update

from neurodash.app import current_unit, ids, jobs, model_worker
from neurodash.app.render import highlights, widgets
from neurodash.errors import NeurodashError
from neurodash.units import UnitRef

MAX_CHARS = 4000
JOB = jobs.JobControls(
    ids.OWN_TEXT_RUN,
    ids.OWN_TEXT_CANCEL,
    ids.OWN_TEXT_PROGRESS,
    ids.OWN_TEXT_PROGRESS_BOX,
    ids.OWN_TEXT_STAGE,
    ids.OWN_TEXT_STATUS,
)


def panel(max_abs: float) -> html.Section:
    """The text box, the run button and the result (tokens coloured relative to ``max_abs``)."""
    return widgets.panel(
        "Try your own text",
        dcc.Textarea(
            id=ids.OWN_TEXT_INPUT,
            value="",
            placeholder="Type or paste a text: this unit's activation on each of its tokens appears below.",
            maxLength=MAX_CHARS,
            className="nd-own-text",
        ),
        JOB.toolbar("Run", 2),
        dcc.Store(id=ids.OWN_TEXT_SCALE, data=max_abs),
        dcc.Store(id=ids.OWN_TEXT_DATA),
        html.Div(id=ids.OWN_TEXT_RESULT),
    )


def own_text_job(
    set_progress: Callable, store_path: str, unit: UnitRef | None, text: str | None
) -> tuple[dict | None, str]:
    """The background job: ({"tokens", "acts"} or None, a status line)."""
    if unit is None:
        return None, "No unit."
    if not text or not text.strip():
        return None, "Type a text first."
    set_progress(("1", "2", "Loading the model and running it…"))
    try:  # in the model worker, where the model stays loaded
        result = model_worker.call(
            "precompute.live.own_text:store_unit_on_text", store_path, unit, text[:MAX_CHARS]
        )
    except ImportError:
        return None, "Running the model needs the model extras: pip install 'neurodash[precompute]'."
    except NeurodashError as e:
        return None, f"Cannot run it: {e}"
    peak = max(result.acts, default=0.0)
    return {"tokens": list(result.tokens), "acts": list(result.acts)}, (
        f"{len(result.tokens)} tokens · max {peak:+.3f}"
    )


def show(data: dict | None, max_abs: float | None) -> html.Div | NoUpdate:
    """The text's tokens coloured by the unit, the strongest outlined."""
    if not data or not data.get("tokens"):
        return no_update
    acts = data["acts"]
    peak = max(range(len(acts)), key=lambda i: acts[i])
    return html.Div(
        highlights.token_row(data["tokens"], acts, max_abs or max(abs(a) for a in acts) or 1e-9, peak),
        className="nd-examples nd-own-text-result",
    )


def register_callbacks(app: Dash, store_path: str | os.PathLike) -> None:
    store_path = str(store_path)

    @app.callback(
        Output(ids.OWN_TEXT_DATA, "data"),
        Output(ids.OWN_TEXT_STATUS, "children"),
        Input(ids.OWN_TEXT_RUN, "n_clicks"),
        current_unit.state(),
        State(ids.OWN_TEXT_INPUT, "value"),
        **JOB.background_options(2, interval_ms=300),
    )
    def run_own_text(set_progress, _clicks, unit, text):
        gc.freeze()  # forked from the threaded server: collect only what the job creates
        return own_text_job(set_progress, store_path, current_unit.read(unit), text)

    app.callback(
        Output(ids.OWN_TEXT_RESULT, "children"),
        Input(ids.OWN_TEXT_DATA, "data"),
        State(ids.OWN_TEXT_SCALE, "data"),
        prevent_initial_call=True,
    )(show)
