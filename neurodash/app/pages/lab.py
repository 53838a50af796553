"""The circuit lab (``routes.LAB``, ``/lab``): prompts in, predictions, logit lens, attribution,
attention, ablation, activation patching, a minimal circuit and steering out.

The URL holds the settings (``LabSettings.to_query``: ``?prompt=A B A B A&prompt=X Y X Y X&steer=...``)
and, once a run is done, its id (``?run=3``): a run is shared and reopened by its URL. A run is a
background job (DiskcacheManager, progress and cancel), forked from the server, that has the model
worker run it (``model_worker``: the model loaded once per server, torch never in the server); it
saves the run in the lab file beside the store (``neurodash.storage.lab``) and moves the page to the
run's URL, which draws it from the file.
"""

from __future__ import annotations

import functools
import gc
import os
from collections.abc import Callable
from pathlib import Path

from dash import ALL, Dash, Input, Output, State, ctx, dcc, html, no_update
from dash.exceptions import PreventUpdate

from neurodash.app import ids, jobs, model_worker, routes, state
from neurodash.app.panels import lab_results
from neurodash.app.render import widgets
from neurodash.errors import NeurodashError
from neurodash.lab import ABLATIONS
from neurodash.lab_run import CORRUPTIONS, LabRun, LabSettings, Steer, parse_steer
from neurodash.storage import owned
from neurodash.storage.lab import LabRuns, lab_path

TITLE = "Circuit lab · neurodash"
COURSE = ("A B A B A", "X Y X Y X", "1 2 1 2 1", "cat dog cat dog cat")  # the course's exercise
JOB = jobs.JobControls(
    ids.LAB_RUN, ids.LAB_CANCEL, ids.LAB_PROGRESS, ids.LAB_PROGRESS_BOX, ids.LAB_STAGE, ids.LAB_STATUS
)
N_STAGES = 6


# --- reading the URL ---------------------------------------------------------------------------
def settings_from_query(query: dict) -> tuple[LabSettings | None, str]:
    """(settings, error): the page's settings from its query; the course's prompts when it names none.
    A bare unit to steer (``?steer=L15N631``, from a unit page's Steer link) gets coefficient 4."""
    query = dict(query)
    steer = query.get("steer")
    if steer is not None:
        values = [steer] if isinstance(steer, str) else list(steer)
        query["steer"] = [v if "=" in v else f"{v}=4" for v in values]
    try:
        settings = LabSettings.from_query(query)
    except NeurodashError as e:
        return None, str(e)
    if not settings.prompts:
        settings = LabSettings(
            COURSE, steer=settings.steer, ablation=settings.ablation, corruption=settings.corruption
        )
    return settings, ""


def settings_from_form(
    prompts: str | None,
    answers: str | None,
    counterfactuals: str | None,
    corrupted: str | None,
    corruption: str | None,
    ablation: str | None,
    steer: str | None,
) -> LabSettings:
    """The form's settings (one prompt per line; an empty line among them is an empty prompt); a
    ``NeurodashError`` saying what is wrong."""
    return LabSettings(
        prompts=_lines(prompts),
        answers=_lines(answers),
        counterfactuals=_lines(counterfactuals),
        corrupted=_lines(corrupted),
        corruption=corruption or CORRUPTIONS[0],
        ablation=ablation or "mean",
        steer=tuple(parse_steer(s) for s in (steer or "").replace(",", " ").split() if s),
    ).check()


def _lines(text: str | None) -> tuple[str, ...]:
    """Lines as typed (spaces matter: " B" and "1 2 1 2 1 " are other tokens than "B" and
    "1 2 1 2 1"), trailing empty ones dropped; a line of spaces only is empty."""
    lines = [line.rstrip("\r") for line in (text or "").split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    return tuple("" if not line.strip() else line for line in lines)


def _steer_text(steer: tuple[Steer, ...]) -> str:
    return ", ".join(str(s) for s in steer)


# --- the page ----------------------------------------------------------------------------------
def layout(run: str | list[str] | None = None, **query) -> html.Div:
    store_path = state.current().store.path
    run = run[0] if isinstance(run, list) else run
    settings, error = settings_from_query(query)
    shown: LabRun | None = None
    missing = ""
    if run is not None:
        try:
            shown = load_run(str(lab_path(store_path)), int(run), owned.version(lab_path(store_path)))
        except (ValueError, NeurodashError):
            shown = None
        if shown is None:
            missing = f"There is no lab run {run!r} beside this store."
        else:
            settings = shown.settings
    return html.Div(
        [
            dcc.Location(id=ids.LAB_LOCATION, refresh="callback-nav"),
            html.H1("Circuit lab", className="nd-title"),
            html.P(
                "Test what heads and units do on a prompt: predictions, logit lens, direct logit attribution, "
                "attention, ablation of every head and MLP, activation patching from the clean into the "
                "corrupted prompt, a greedy minimal circuit and steering. Runs are saved beside the store.",
                className="nd-muted",
            ),
            widgets.panel("Settings", *form(settings), html.P(error or missing, className="nd-lab-error")),
            dcc.Store(id=ids.LAB_RUN_ID, data=shown.run_id if shown else None),
            html.Div(lab_results.show(shown) if shown else [], id="lab-results"),
            widgets.panel("Saved runs", runs_list(store_path)),
        ]
    )


def form(settings: LabSettings | None) -> list:
    s = settings or LabSettings(COURSE)
    n = len(s.prompts)

    def per_prompt(values: tuple[str, ...]) -> str:
        return "\n".join(values[:n])

    def box(label: str, box_id: str, value: str, placeholder: str) -> html.Div:
        return html.Div(
            [
                html.Label(label, htmlFor=box_id),
                dcc.Textarea(
                    id=box_id, value=value, placeholder=placeholder, className="nd-textarea", spellCheck=False
                ),
            ]
        )

    return [
        html.Div(
            [
                box("Prompts, one per line", ids.LAB_PROMPTS, "\n".join(s.prompts), "A B A B A"),
                box(
                    "Answers (a line each; empty: top prediction)",
                    ids.LAB_ANSWERS,
                    per_prompt(s.answers),
                    " B",
                ),
                box(
                    "Counterfactual answers (metric = logit difference)",
                    ids.LAB_COUNTERFACTUALS,
                    per_prompt(s.counterfactuals),
                    " C",
                ),
                box(
                    "Corrupted prompts (same length; empty: default)",
                    ids.LAB_CORRUPTED,
                    per_prompt(s.corrupted),
                    "A C A C A",
                ),
            ],
            className="nd-lab-form",
        ),
        html.Div(
            [
                html.Label("default corruption", htmlFor=ids.LAB_CORRUPTION, className="nd-muted"),
                dcc.Dropdown(
                    id=ids.LAB_CORRUPTION,
                    options=list(CORRUPTIONS),
                    value=s.corruption,
                    clearable=False,
                    className="nd-lab-pick",
                ),
                html.Label("ablation", htmlFor=ids.LAB_ABLATION, className="nd-muted"),
                dcc.Dropdown(
                    id=ids.LAB_ABLATION,
                    options=list(ABLATIONS),
                    value=s.ablation,
                    clearable=False,
                    className="nd-lab-pick",
                ),
                html.Label("steer with", htmlFor=ids.LAB_STEER, className="nd-muted"),
                dcc.Input(
                    id=ids.LAB_STEER,
                    value=_steer_text(s.steer),
                    placeholder="L15N631=4, L8H1=2",
                    className="nd-lab-steer",
                    debounce=False,
                ),
            ],
            className="nd-lab-options",
        ),
        JOB.toolbar("Run the lab", N_STAGES),
    ]


def runs_list(store_path: str | os.PathLike) -> html.Ul | html.P:
    try:
        runs = LabRuns.beside(store_path).list()
    except NeurodashError as e:
        return html.P(f"Saved runs cannot be shown: {e}", className="nd-muted")
    if not runs:
        return html.P("No saved runs yet.", className="nd-muted")
    items = []
    for r in runs:
        when = f"{r.created_at:%Y-%m-%d %H:%M}" if r.created_at else ""
        items.append(
            html.Li(
                [
                    dcc.Link(f"run {r.run_id}", href=routes.lab_href(r.query, r.run_id)),
                    html.Span(f" · {when} · {r.seconds:.0f} s · ", className="nd-muted"),
                    html.Span(" | ".join(r.prompts), className="nd-mono"),
                ]
            )
        )
    return html.Ul(items, className="nd-lab-runs")


@functools.lru_cache(maxsize=8)
def load_run(path: str, run_id: int, version: tuple) -> LabRun | None:
    """A saved run (runs never change; ``version`` only tells a new file from a deleted one)."""
    return LabRuns(path).get(run_id)


def _current_run(store_path: str, run_id: int | None) -> LabRun:
    if run_id is None:
        raise PreventUpdate
    path = lab_path(store_path)
    run = load_run(str(path), int(run_id), owned.version(path))
    if run is None:
        raise PreventUpdate
    return run


# --- the job ------------------------------------------------------------------------------------
def lab_job(set_progress: Callable, store_path: str, settings: LabSettings) -> tuple[str | None, str]:
    """The background job: (the run's URL, or None; a status line). Saves the run when done. Runs in
    the model worker (``model_worker``: the model loaded once, one torch thread) when there is one."""
    try:
        runs = LabRuns.beside(store_path).check()
        set_progress(("0", str(N_STAGES), "Loading the model…"))
        run = model_worker.call(
            "precompute.live.lab_run:run_lab",
            store_path,
            settings,
            progress=lambda done, total, stage: set_progress((str(done), str(total), stage)),
        )
        run_id = runs.save(run)
    except ImportError:
        return None, "The lab needs the model extras: pip install 'neurodash[precompute]'."
    except NeurodashError as e:
        return None, f"Cannot run the lab: {e}"
    return routes.lab_href(settings.to_query(), run_id), f"Run {run_id} done in {run.seconds:.0f} s."


def start(set_progress: Callable, store_path: str, *form_values: str | None) -> tuple:
    """(the run's URL or ``no_update``, a status line) for the form's values."""
    try:
        settings = settings_from_form(*form_values)
    except NeurodashError as e:
        return no_update, f"Cannot run the lab: {e}"
    href, status = lab_job(set_progress, store_path, settings)
    return href or no_update, status


def register_callbacks(app: Dash, store_path: str | os.PathLike) -> None:
    store_path = str(Path(store_path))

    @app.callback(
        Output(ids.LAB_LOCATION, "href"),
        Output(ids.LAB_STATUS, "children"),
        Input(ids.LAB_RUN, "n_clicks"),
        State(ids.LAB_PROMPTS, "value"),
        State(ids.LAB_ANSWERS, "value"),
        State(ids.LAB_COUNTERFACTUALS, "value"),
        State(ids.LAB_CORRUPTED, "value"),
        State(ids.LAB_CORRUPTION, "value"),
        State(ids.LAB_ABLATION, "value"),
        State(ids.LAB_STEER, "value"),
        **JOB.background_options(N_STAGES, interval_ms=500),
    )
    def run_lab_job(set_progress, _clicks, *form_values):
        gc.freeze()  # forked from the threaded server: collect only what the job creates
        return start(set_progress, store_path, *form_values)

    @app.callback(
        Output(ids.LAB_PROMPT_BODY, "children"),
        Input(ids.LAB_PROMPT_PICK, "value"),
        State(ids.LAB_RUN_ID, "data"),
        prevent_initial_call=True,
    )
    def pick_prompt(prompt, run_id):
        run = _current_run(store_path, run_id)
        return lab_results.prompt_body(run, _index(prompt, len(run.prompts)))

    @app.callback(
        Output(ids.LAB_ATTN_BODY, "children"),
        Input(ids.LAB_ATTN_HEAD, "value"),
        Input(ids.LAB_ATTN_BACK, "value"),
        Input(ids.LAB_PROMPT_PICK, "value"),
        State(ids.LAB_RUN_ID, "data"),
    )
    def pick_head(head, back, prompt, run_id):
        run = _current_run(store_path, run_id)
        layer, index = (int(x) for x in str(head).split("/"))
        return lab_results.attention_body(run, _index(prompt, len(run.prompts)), layer, index, int(back or 2))

    @app.callback(
        Output(ids.LAB_DOWNLOAD, "data"),
        Input({"type": ids.LAB_DOWNLOAD_FORMAT, "fmt": ALL}, "n_clicks"),
        State(ids.LAB_RUN_ID, "data"),
        prevent_initial_call=True,
    )
    def download(clicks, run_id):
        if not any(clicks) or not isinstance(ctx.triggered_id, dict):
            raise PreventUpdate
        return lab_results.download(_current_run(store_path, run_id), ctx.triggered_id["fmt"])


def _index(value: object, n: int) -> int:
    return value if isinstance(value, int) and 0 <= value < n else 0
