"""The text probe: run the store's model on a text in a background job, then show which units fire
most over the text and at each token, the text coloured by a chosen unit, and every head's attention
(``panels/probe_attention.py``).

The model runs in a background callback (``DiskcacheManager``): each job is a process forked
from the server, which has the model worker run the probe (``model_worker``: the model loaded once per
server; torch never in a request thread).
"""

from __future__ import annotations

import gc
from collections.abc import Callable

from dash import Dash, Input, Output, State, dcc, html
from dash.exceptions import PreventUpdate

from neurodash.app import ids, jobs, model_worker, render, state
from neurodash.app.data import label_prefixes, summarise_probe, unit_label
from neurodash.app.panels import probe_attention
from neurodash.errors import NeurodashError
from neurodash.units import UnitRef

DEFAULT_TEXT = (
    'def greet(name):\n    """Return a friendly greeting."""\n    return f"Hello, {name}!"\n\n'
    "The os.path module implements some useful functions on pathnames."
)
STAGES = 3
JOB = jobs.JobControls(
    ids.PROBE_RUN,
    ids.PROBE_CANCEL,
    ids.PROBE_PROGRESS,
    ids.PROBE_PROGRESS_BOX,
    ids.PROBE_STAGE,
    ids.PROBE_STATUS,
)
STRONGEST = -1  # colour by: the strongest fraction of max at each token, over all units


def layout(config: dict) -> list:
    """The text, the run and its progress, and the results' places (the page's children); ``config``
    is what the job needs (``model``, ``hooks``: hook -> source id, ``keep_bos``, ``attention``: whether
    to read every head's pattern)."""
    return [
        dcc.Store(id=ids.PROBE_CONFIG, data=config),
        dcc.Textarea(id=ids.PROBE_TEXT, value=DEFAULT_TEXT, className="nd-textarea", spellCheck=False),
        JOB.toolbar("Run", STAGES),
        dcc.Store(id=ids.PROBE_RESULT),
        dcc.Store(id=ids.PROBE_SELECTED_TOKEN),
        html.Div(
            [
                html.Span("Colour tokens by", className="nd-muted"),
                dcc.Dropdown(
                    id=ids.PROBE_COLOR_BY,
                    options=[],
                    clearable=False,
                    searchable=False,
                    className="nd-color-by",
                ),
            ],
            className="nd-toolbar",
        ),
        html.Div(
            id=ids.TOKEN_INSPECTOR,
            className="nd-inspector",
            children="Click a token to see its top units.",
        ),
        html.Div(id=ids.PROBE_TOKENS, className="nd-probe-tokens"),
        html.Div(
            [
                render.panel("Top units at the selected token", html.Div(id=ids.PROBE_TOKEN_UNITS)),
                render.panel("Top units over the text", html.Div(id=ids.PROBE_TOP_UNITS)),
            ],
            className="nd-grid-2",
        ),
        *([probe_attention.layout()] if config.get("attention") else []),
    ]


def probe_job(
    set_progress: Callable, text: str | None, config: dict, unit_max: dict
) -> tuple[dict | None, str]:
    """The background job: (summary for ``probe-result``, status line), the probe run by the model worker."""
    if text is None or not text.strip():
        return None, "Type or paste a text first."
    if not config["hooks"]:
        return None, "This store has no neuron sources to probe."
    try:
        set_progress(("1", str(STAGES), f"Running {config['model']}…"))
        tokens, acts = model_worker.call(  # in the model worker, where the model stays loaded
            "precompute.live.probe:probe_text",
            config["model"],
            text,
            list(config["hooks"]),
            keep_bos=config["keep_bos"],
            attention=bool(config.get("attention")),
        )
    except ImportError:
        return None, "The text probe needs the model extras: pip install 'neurodash[precompute]'."
    except NeurodashError as e:
        return None, f"Cannot probe: {e}"
    if not tokens:
        return None, "The text has no tokens."
    set_progress(("3", str(STAGES), "Ranking units…"))
    patterns = acts.pop(probe_attention.ATTENTION_KEY, None)
    by_source = {config["hooks"][hook]: a for hook, a in acts.items()}
    summary = summarise_probe(tokens, by_source, unit_max)
    if patterns is not None:
        info = probe_attention.attention_info(tokens, patterns)
        summary["attention"] = info | {"key": probe_attention.save_patterns(patterns)}
    return summary, f"{len(tokens)} tokens probed."


def strongest_token(result: dict) -> int:
    strength = result["strength"]
    return max(range(len(strength)), key=strength.__getitem__)


def unit_rows(entries: list[list], tokens: list[str], prefixes: dict) -> list[tuple]:
    """Rows for ``render.ranked_units`` from summary entries ``[source, unit, act, fraction(, pos)]``."""
    rows = []
    for entry in entries:
        ref = UnitRef(entry[0], entry[1])
        at = repr(tokens[entry[4]]) if len(entry) > 4 else None
        rows.append((unit_label(ref, prefixes), ref, entry[2], entry[3], at))
    return rows


def token_panel(result: dict, pos: int, prefixes: dict) -> list:
    return [
        html.P(
            ["Token ", html.Code(repr(result["tokens"][pos])), f" at position {pos}"], className="nd-muted"
        ),
        render.ranked_units(unit_rows(result["per_token"][pos], result["tokens"], prefixes), "No units."),
    ]


def colour_options(result: dict, prefixes: dict) -> list[dict]:
    """The choices of ``probe-color-by``: each top unit over the text, or the strongest at each token."""
    units = [
        {"label": f"{unit_label(UnitRef(e[0], e[1]), prefixes)}  (peak {e[2]:+.3f})", "value": i}
        for i, e in enumerate(result["top"])
    ]
    return [*units, {"label": "the strongest unit at each token (fraction of its max)", "value": STRONGEST}]


def show_result(result: dict | None) -> tuple:
    """The top units over the text, the strongest token's units, and the colouring choices."""
    if not result:
        return None, None, [], None
    prefixes = label_prefixes(state.current().store.sources())
    top = render.ranked_units(unit_rows(result["top"], result["tokens"], prefixes), "No units.")
    first = 0 if result["top"] else STRONGEST
    return (
        top,
        token_panel(result, strongest_token(result), prefixes),
        colour_options(result, prefixes),
        first,
    )


def colour_tokens(choice: int | None, result: dict | None):
    """The probed text as clickable tokens, coloured by the chosen unit (its peak marked)."""
    if not result or choice is None:
        return None
    if choice == STRONGEST or choice >= len(result["top"]):
        acts, max_abs, marked = (
            result["strength"],
            max(max(result["strength"]), 1e-9),
            strongest_token(result),
        )
    else:
        acts, max_abs, marked = (
            result["top_acts"][choice],
            result["top_max"][choice],
            result["top"][choice][4],
        )
    return render.token_row(result["tokens"], acts, max_abs, marked)


def select_token(selected: dict | None, result: dict | None) -> list:
    """A token was clicked (``selected["index"]``, set in the browser): its top units."""
    if not result or not selected or not 0 <= selected["index"] < len(result["tokens"]):
        raise PreventUpdate
    return token_panel(result, selected["index"], label_prefixes(state.current().store.sources()))


def register_callbacks(app: Dash, unit_max: dict) -> None:
    """``unit_max`` is captured here so the forked background job has it in memory."""
    probe_attention.register_callbacks(app)

    @app.callback(
        Output(ids.PROBE_RESULT, "data"),
        Output(ids.PROBE_STATUS, "children"),
        Input(ids.PROBE_RUN, "n_clicks"),
        State(ids.PROBE_TEXT, "value"),
        State(ids.PROBE_CONFIG, "data"),
        **JOB.background_options(STAGES, interval_ms=250),
    )
    def run_probe(set_progress, _clicks, text, config):
        # This runs in a process forked from the (threaded) server: what it inherited is not its own
        # to garbage-collect, and traversing it can crash; collect only what the job creates.
        gc.freeze()
        return probe_job(set_progress, text, config, unit_max)

    app.callback(
        Output(ids.PROBE_TOP_UNITS, "children"),
        Output(ids.PROBE_TOKEN_UNITS, "children"),
        Output(ids.PROBE_COLOR_BY, "options"),
        Output(ids.PROBE_COLOR_BY, "value"),
        Input(ids.PROBE_RESULT, "data"),
        prevent_initial_call=True,
    )(show_result)
    app.callback(
        Output(ids.PROBE_TOKENS, "children"),
        Input(ids.PROBE_COLOR_BY, "value"),
        Input(ids.PROBE_RESULT, "data"),
        prevent_initial_call=True,
    )(colour_tokens)
    app.callback(
        Output(ids.PROBE_TOKEN_UNITS, "children", allow_duplicate=True),
        Input(ids.PROBE_SELECTED_TOKEN, "data"),
        State(ids.PROBE_RESULT, "data"),
        prevent_initial_call=True,
    )(select_token)
