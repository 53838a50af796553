"""The unit page's "Maximize" panel: search prompts that drive the unit hardest, in a background job.

The previous run (from the results file beside the store, ``neurodash.storage.maximize``) is drawn
with the page. A run is a background callback on the app's DiskcacheManager, as the text probe's:
a process forked from the server that has the model worker run the search (``model_worker``: the
model loaded once per server; torch never in the server), with a progress bar and cancel. A cancelled run leaves the results file as it was.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable

from dash import Dash, Input, NoUpdate, Output, State, dcc, html, no_update

from neurodash.app import current_unit, ids, jobs, model_worker, running
from neurodash.app.render import figures, highlights, widgets
from neurodash.colors import POSITIVE, rgba
from neurodash.config import DEFAULT_LENGTH, DEFAULT_STEPS, MAX_LENGTH, MaximizeConfig
from neurodash.errors import NeurodashError
from neurodash.results import Frontier, frontier_from_json
from neurodash.storage.maximize import MaximizeResults
from neurodash.units import UnitRef

MAX_STEPS = 1000  # from the page; the CLI allows more
JOB = jobs.JobControls(
    ids.MAXIMIZE_RUN,
    ids.MAXIMIZE_CANCEL,
    ids.MAXIMIZE_PROGRESS,
    ids.MAXIMIZE_PROGRESS_BOX,
    ids.MAXIMIZE_STAGE,
    ids.MAXIMIZE_STATUS,
)


# --- rendering (pure) -------------------------------------------------------------------------


def frontier_figure(frontier: Frontier) -> dict:
    """Activation against cross-entropy for the frontier's prompts; the corpus max as a dashed line."""
    prompts = frontier.prompts
    points = {
        "type": "scatter",
        "mode": "lines+markers",
        "x": [p.cross_entropy for p in prompts],
        "y": [p.activation for p in prompts],
        "line": {"shape": "hv", "color": rgba(POSITIVE, 0.5)},
        "marker": {"size": 9, "color": rgba(POSITIVE, 0.95)},
        "customdata": [figures.plotly_text(repr(p.text)[:80]) for p in prompts],
        "hovertemplate": "%{customdata}<br>activation %{y:.3f} · cross-entropy %{x:.2f}<extra></extra>",
    }
    reference = {
        "type": "line",
        "xref": "paper",
        "x0": 0,
        "x1": 1,
        "yref": "y",
        "y0": frontier.corpus_max,
        "y1": frontier.corpus_max,
        "line": {"dash": "dash", "color": "#667085", "width": 1},
    }
    label = {
        "xref": "paper",
        "x": 0.0,
        "xanchor": "left",
        "y": frontier.corpus_max,
        "yanchor": "bottom",
        "text": f"best corpus example {frontier.corpus_max:.3f}",
        "showarrow": False,
        "font": {"size": 11, "color": "#667085"},
    }
    layout = figures.figure_layout(
        height=280,
        xaxis={
            "title": {"text": "cross-entropy (nats per token; lower is more fluent)"},
            "gridcolor": "#eee",
        },
        yaxis={
            "title": {"text": "activation at the last token"},
            "gridcolor": "#eee",
            "rangemode": "tozero" if frontier.corpus_max > 0 else "normal",
        },
        shapes=[reference],
        annotations=[label],
    )
    return {"data": [points], "layout": layout}


def prompt_rows(frontier: Frontier) -> html.Div:
    """The frontier's prompts, strongest first, tokens coloured by the unit (the last outlined)."""
    max_abs = max([abs(a) for p in frontier.prompts for a in p.acts] + [abs(frontier.corpus_max), 1e-9])
    rows = []
    for p in sorted(frontier.prompts, key=lambda p: -p.activation):
        rows.append(
            html.Div(
                [
                    html.Span(
                        f"{p.activation:+.3f}",
                        className="nd-value",
                        title=f"activation at the last token; cross-entropy {p.cross_entropy:.2f}",
                    ),
                    html.Span(f"CE {p.cross_entropy:.2f}", className="nd-value nd-muted"),
                    highlights.token_row(p.tokens, p.acts, max_abs, len(p.tokens) - 1),
                ],
                className="nd-example",
            )
        )
    return html.Div(rows, className="nd-examples")


def show(frontier: Frontier | None) -> list:
    """The results area: a summary line, the frontier plot and the prompts; a hint when there is no run."""
    if frontier is None or not frontier.prompts:
        return [html.P("No maximization run for this unit yet: press Maximize.", className="nd-muted")]
    best = frontier.best
    ratio = (
        f" ({best.activation / frontier.corpus_max:.2f}x the best corpus example)"
        if frontier.corpus_max > 0
        else ""
    )
    when = f", {frontier.created_at:%Y-%m-%d %H:%M} UTC" if frontier.created_at else ""
    return [
        html.P(
            f"Best activation {best.activation:.3f}{ratio}; {len(frontier.prompts)} prompts on the frontier "
            f"({frontier.steps} steps, {frontier.length} tokens, seed {frontier.seed}, "
            f"{frontier.seconds:.0f} s{when}).",
            className="nd-muted",
        ),
        figures.graph(frontier_figure(frontier), ids.MAXIMIZE_FIGURE),
        prompt_rows(frontier),
    ]


def panel(ref: UnitRef, store_path: str | os.PathLike) -> html.Section:
    """The panel, with the unit's latest run drawn at once."""
    number = {
        "type": "number",
        "step": 1,
        "min": 1,
        "debounce": True,
        "style": {"width": "88px"},
        "className": "nd-button",
    }
    return widgets.panel(
        "Activation maximization",
        html.P(
            "Searches prompts that drive this unit hardest at their last token: gradient-guided token swaps "
            "over a population that trades activation against fluency (the model's cross-entropy on the prompt).",
            className="nd-muted",
        ),
        JOB.toolbar(
            "Maximize",
            DEFAULT_STEPS,
            settings=[
                html.Span("tokens", className="nd-muted"),
                dcc.Input(id=ids.MAXIMIZE_LENGTH, value=DEFAULT_LENGTH, max=MAX_LENGTH, **number),
                html.Span("steps", className="nd-muted"),
                dcc.Input(id=ids.MAXIMIZE_STEPS, value=DEFAULT_STEPS, max=MAX_STEPS, **number),
            ],
        ),
        dcc.Store(id=ids.MAXIMIZE_DATA),
        html.Div(latest(ref, store_path), id=ids.MAXIMIZE_RESULT),
        # while a run started before this page was built is in progress: watch it until it ends
        dcc.Interval(id=ids.MAXIMIZE_WATCH, interval=2000, disabled=in_progress(ref, store_path) is None),
    )


def in_progress(ref: UnitRef, store_path: str | os.PathLike) -> running.Running | None:
    return running.find(running.key("maximize", store_path, str(ref)))


def running_line(job: running.Running) -> html.P:
    """A run in progress, as the page says it (after a reload, the job goes on in the background)."""
    eta = running.eta_text(job.seconds_left())
    return html.P(
        f"A maximization run of this unit is in progress: step {job.done} of {job.total}"
        f"{f', {eta}' if eta else ''}. Its result appears here when it ends.",
        className="nd-muted nd-running",
    )


def latest(ref: UnitRef, store_path: str | os.PathLike) -> list:
    """The unit's latest run, drawn (below a line about a run in progress, if one is); a line saying
    why when the results file cannot be read."""
    job = in_progress(ref, store_path)
    if job is not None:
        try:
            previous = MaximizeResults.beside(store_path).latest(ref)
        except NeurodashError:
            previous = None
        return [running_line(job), *(show(previous) if previous is not None else [])]
    try:
        return show(MaximizeResults.beside(store_path).latest(ref))
    except NeurodashError as e:
        return [html.P(f"Previous runs cannot be shown: {e}", className="nd-muted")]


# --- the job and its callbacks ---------------------------------------------------------------


def maximize_job(
    set_progress: Callable, store_path: str, unit: UnitRef | None, length: int | None, steps: int | None
) -> tuple[dict | None, str]:
    """The background job: (the frontier as JSON, or None; a status line). Saves the run when done."""
    if unit is None:
        return None, "No unit."
    if not isinstance(length, int) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        return None, f"Give a length (1 to {MAX_LENGTH} tokens) and a number of steps (1 to {MAX_STEPS})."
    job, started = running.key("maximize", store_path, str(unit)), time.time()

    def progress(done: int, total: int) -> None:
        running.report(job, done, total, started)
        eta = running.eta_text(running.Running(done, total, started).seconds_left())
        set_progress((str(done), str(total), f"step {done} of {total}" + (f" · {eta}" if eta else "")))

    try:
        config = MaximizeConfig(length=length, steps=steps)
        running.report(job, 0, steps, started)
        set_progress(("0", str(steps), "Loading the model…"))
        frontier = model_worker.call(  # in the model worker, where the model stays loaded
            "precompute.live.maximize:maximize", store_path, unit, config=config, progress=progress
        )
        MaximizeResults.beside(store_path).save(frontier)
    except ImportError:
        return None, "Maximization needs the model extras: pip install 'neurodash[precompute]'."
    except NeurodashError as e:
        return None, f"Cannot maximize: {e}"
    finally:
        running.finish(job)
    return frontier.to_json(), f"Done in {frontier.seconds:.0f} s."


def show_data(data: dict | None) -> list | NoUpdate:
    if not data:
        return no_update
    return show(frontier_from_json(data))


def register_callbacks(app: Dash, store_path: str | os.PathLike) -> None:
    """``store_path`` is captured here: the forked job opens the store and the results file itself."""
    store_path = str(store_path)

    @app.callback(
        Output(ids.MAXIMIZE_DATA, "data"),
        Output(ids.MAXIMIZE_STATUS, "children"),
        Input(ids.MAXIMIZE_RUN, "n_clicks"),
        current_unit.state(),
        State(ids.MAXIMIZE_LENGTH, "value"),
        State(ids.MAXIMIZE_STEPS, "value"),
        **JOB.background_options(DEFAULT_STEPS, interval_ms=500),
    )
    def run_maximize(set_progress, _clicks, unit, length, steps):
        gc.freeze()  # forked from the threaded server: collect only what the job creates (see panels/text_probe.py)
        return maximize_job(set_progress, store_path, current_unit.read(unit), length, steps)

    app.callback(
        Output(ids.MAXIMIZE_RESULT, "children"),
        Input(ids.MAXIMIZE_DATA, "data"),
        prevent_initial_call=True,
    )(show_data)

    @app.callback(
        Output(ids.MAXIMIZE_RESULT, "children", allow_duplicate=True),
        Output(ids.MAXIMIZE_WATCH, "disabled"),
        Input(ids.MAXIMIZE_WATCH, "n_intervals"),
        current_unit.state(),
        prevent_initial_call=True,
    )
    def watch(_n, unit):
        return watch_run(store_path, current_unit.read(unit))


def watch_run(store_path: str, unit: UnitRef | None) -> tuple[list | NoUpdate, bool]:
    """(the results area, whether to stop watching) for a run started before the page was built."""
    if unit is None:
        return no_update, True
    return latest(unit, store_path), in_progress(unit, store_path) is None
