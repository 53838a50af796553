"""The text probe: run the store's model on a text in a background job, then show which units
(neurons and SAE features) fire most over the text and at each token, the text coloured by any unit,
and every head's attention (``panels/probe_attention.py``).

The model runs in a background callback (``DiskcacheManager``): each job is a process forked
from the server, which has the model worker run the probe (``model_worker``: the model loaded once per
server; torch never in a request thread). The job saves its run (``panels/probe_runs.py``) and the page
moves to the run's address, ``/probe?run=KEY``, which shows the text and its results again after a
unit page and Back.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Mapping

import numpy as np
from dash import Dash, Input, NoUpdate, Output, State, dcc, html, no_update
from dash.exceptions import PreventUpdate

from neurodash.app import ids, jobs, model_worker, state
from neurodash.app.data import label_prefixes, probe_scale, summarise_probe, unit_label
from neurodash.app.panels import probe_attention, probe_runs
from neurodash.app.render import highlights, tables, widgets
from neurodash.errors import NeurodashError
from neurodash.units import SAE_FEATURE, Source, UnitRef, parse_ref

PLACEHOLDER = 'Type or paste a text, e.g. def greet(name): return f"Hello, {name}!"'
STAGES = 3
JOB = jobs.JobControls(
    ids.PROBE_RUN,
    ids.PROBE_CANCEL,
    ids.PROBE_PROGRESS,
    ids.PROBE_PROGRESS_BOX,
    ids.PROBE_STAGE,
    ids.PROBE_STATUS,
)
STRONGEST = "strongest"  # colour by: the strongest fraction of max at each token, over all units


def layout(config: dict, run: str | None = None) -> list:
    """The text, the run and its progress, and the results' places (the page's children), showing the
    saved run ``run`` if given; ``config`` is what the job needs (``model``, ``hooks``: hook -> source
    id, ``saes``: SAE feature source ids, ``keep_bos``, ``attention``: whether to read every head's
    pattern)."""
    saved = probe_runs.load(run) if run else None
    if saved:
        status = probed(saved)
    elif run:
        status = f"That run is no longer kept (the latest {probe_runs.KEEP} are): run the text again."
    else:
        status = None
    return [
        dcc.Location(id=ids.PROBE_LOCATION, refresh="callback-nav"),
        dcc.Store(id=ids.PROBE_CONFIG, data=config),
        dcc.Textarea(
            id=ids.PROBE_TEXT,
            value=saved["text"] if saved else "",
            placeholder=PLACEHOLDER,
            className="nd-textarea",
            spellCheck=False,
        ),
        JOB.toolbar("Run", STAGES, status=status),
        dcc.Store(id=ids.PROBE_RESULT, data=saved),
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
                html.Span("or any unit", className="nd-muted"),
                dcc.Input(
                    id=ids.PROBE_COLOR_UNIT,
                    type="text",
                    placeholder="L12N345, L15F7 + Enter",
                    className="nd-input",
                    spellCheck=False,
                ),
                html.Span(id=ids.PROBE_COLOR_UNIT_STATUS, className="nd-error"),
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
                widgets.panel("Top units at the selected token", html.Div(id=ids.PROBE_TOKEN_UNITS)),
                widgets.panel("Top units over the text", html.Div(id=ids.PROBE_TOP_UNITS)),
            ],
            className="nd-grid-2",
        ),
        *([probe_attention.layout()] if config.get("attention") else []),
    ]


def probed(result: dict) -> str:
    return f"{len(result['tokens'])} tokens probed.{result.get('note', '')}"


def probe_job(
    set_progress: Callable,
    text: str | None,
    config: dict,
    unit_max: dict,
    sae_sources: Mapping[str, Source] | None = None,
) -> tuple[dict | None, str]:
    """The background job: (the saved run's result, with its ``key``, or None; a status line), the
    probe run by the model worker. ``sae_sources``: the store's SAE feature sources by id
    (``config["saes"]`` names those to read)."""
    if text is None or not text.strip():
        return None, "Type or paste a text first."
    if not config["hooks"] and not config.get("saes"):
        return None, "This store has no neuron or SAE feature sources to probe."
    known = sae_sources or {}
    saes = [known[sid] for sid in config.get("saes", []) if sid in known]
    try:
        set_progress(("1", str(STAGES), f"Running {config['model']}…"))
        tokens, acts, note = read_text(worker_probe_text, config, text, saes)
    except ImportError:
        return None, "The text probe needs the model extras: pip install 'neurodash[precompute]'."
    except NeurodashError as e:
        return None, f"Cannot probe: {e}"
    if not tokens:
        return None, "The text has no tokens."
    set_progress(("3", str(STAGES), "Ranking units…"))
    summary = rank_and_save(text, tokens, acts, config, unit_max, note)
    return summary, probed(summary)


def worker_probe_text(*args, **kwargs) -> tuple[list[str], dict]:
    """``precompute.live.probe.probe_text`` in the model worker, where the model stays loaded."""
    return model_worker.call("precompute.live.probe:probe_text", *args, **kwargs)


def read_text(
    probe_text: Callable, config: dict, text: str, saes: list[Source]
) -> tuple[list[str], dict, str]:
    """(tokens, activations, a note): ``probe_text`` as ``config`` says; an SAE that cannot load is left
    out, and the note says so, while the neurons are still probed."""

    def run(with_saes: list[Source]) -> tuple[list[str], dict]:
        return probe_text(
            config["model"],
            text,
            list(config["hooks"]),
            keep_bos=config["keep_bos"],
            attention=bool(config.get("attention")),
            saes=with_saes,
        )

    try:
        return *run(saes), ""
    except NeurodashError as e:
        if not saes or not config["hooks"]:
            raise
        return *run([]), f" SAE features left out: {e}"


def rank_and_save(text: str, tokens: list[str], acts: dict, config: dict, unit_max: dict, note: str) -> dict:
    """The run's result (its key included), saved with every unit's activations and the attention."""
    patterns = acts.pop(probe_attention.ATTENTION_KEY, None)
    by_source = {config["hooks"].get(name, name): a for name, a in acts.items()}  # SAEs: by source id
    summary = {"text": text, "note": note} | summarise_probe(tokens, by_source, unit_max)
    if patterns is not None:
        info = probe_attention.attention_info(tokens, patterns)
        summary["attention"] = info | {"key": probe_attention.save_patterns(patterns)}
    summary["key"] = probe_runs.save(summary, np.concatenate(list(by_source.values()), axis=1))
    return summary


def strongest_token(result: dict) -> int:
    strength = result["strength"]
    return max(range(len(strength)), key=strength.__getitem__)


def unit_rows(entries: list[list], tokens: list[str], prefixes: dict) -> list[tables.RankedUnit]:
    """Rows for ``tables.ranked_units`` from summary entries ``[source, unit, act, fraction, max(, pos)]``."""
    rows = []
    for source_id, unit, act, fraction, corpus_max, *pos in entries:
        ref = UnitRef(source_id, unit)
        at = repr(tokens[pos[0]]) if pos else None
        rows.append(tables.RankedUnit(unit_label(ref, prefixes), ref, act, fraction, corpus_max, at))
    return rows


def token_panel(result: dict, pos: int, prefixes: dict) -> list:
    return [
        html.P(
            ["Token ", html.Code(repr(result["tokens"][pos])), f" at position {pos}"], className="nd-muted"
        ),
        tables.ranked_units(unit_rows(result["per_token"][pos], result["tokens"], prefixes), "No units."),
    ]


def colour_option(ref: UnitRef, peak: float, prefixes: dict) -> dict:
    return {"label": f"{unit_label(ref, prefixes)}  (peak {peak:+.3f})", "value": str(ref)}


def colour_options(result: dict, prefixes: dict) -> list[dict]:
    """The choices of ``probe-color-by``: each top unit over the text, or the strongest at each token
    (a unit typed in ``probe-color-unit`` joins them)."""
    units = [colour_option(UnitRef(e[0], e[1]), e[2], prefixes) for e in result["top"]]
    return [*units, {"label": "the strongest unit at each token (fraction of its max)", "value": STRONGEST}]


def show_result(result: dict | None) -> tuple:
    """The top units over the text, the strongest token's units, and the colouring choices."""
    if not result:
        return None, None, [], None
    prefixes = label_prefixes(state.current().store.sources())
    top = tables.ranked_units(unit_rows(result["top"], result["tokens"], prefixes), "No units.")
    first = str(UnitRef(*result["top"][0][:2])) if result["top"] else STRONGEST
    return (
        top,
        token_panel(result, strongest_token(result), prefixes),
        colour_options(result, prefixes),
        first,
    )


def chosen_unit(choice: str, result: dict) -> tuple[list[float], float, int] | None:
    """The chosen unit's activation at every token, its scale and where it peaks: a top unit from the
    result, any other from the saved run (None if the probe did not read it or the run is gone)."""
    for i, entry in enumerate(result["top"]):
        if str(UnitRef(entry[0], entry[1])) == choice:
            return result["top_acts"][i], result["top_max"][i], entry[5]
    try:
        ref = parse_ref(choice)
    except NeurodashError:
        return None
    acts = probe_runs.unit_acts(result, ref)
    unit_max = state.current().unit_max.get(ref.source_id)
    if acts is None or unit_max is None:
        return None
    return acts, float(probe_scale(unit_max)[ref.unit]), int(np.argmax(acts))


def colour_tokens(choice: str | None, result: dict | None):
    """The probed text as clickable tokens, coloured by the chosen unit (its peak marked)."""
    if not result or choice is None:
        return None
    unit = None if choice == STRONGEST else chosen_unit(choice, result)
    if unit is None:
        strength = result["strength"]
        return highlights.token_row(
            result["tokens"], strength, max(max(strength), 1e-9), strongest_token(result)
        )
    acts, scale, marked = unit
    return highlights.token_row(result["tokens"], acts, scale, marked)


def choose_any_unit(
    _submitted: int | None, typed: str | None, result: dict | None, options: list[dict] | None
) -> tuple[list[dict] | NoUpdate, str | NoUpdate, str]:
    """A unit typed in ``probe-color-unit`` joins the colouring choices and is chosen."""
    if not typed or not typed.strip():
        raise PreventUpdate
    if not result:
        return no_update, no_update, "Run the probe first."
    sources = state.current().store.sources()
    try:
        ref = parse_ref(typed.strip(), sources)
    except NeurodashError as e:
        return no_update, no_update, str(e)
    prefixes = label_prefixes(sources)
    acts = probe_runs.unit_acts(result, ref)
    if acts is None:
        read = {s for s, _ in result.get("columns", [])}
        why = (
            "this run is no longer kept: run it again"
            if ref.source_id in read
            else "neurons and SAE features are"
        )
        return no_update, no_update, f"The probe did not read {unit_label(ref, prefixes)} ({why})."
    options = list(options or [])
    if all(o["value"] != str(ref) for o in options):
        options.insert(len(options) - 1, colour_option(ref, max(acts), prefixes))
    return options, str(ref), ""


def select_token(selected: dict | None, result: dict | None) -> list:
    """A token was clicked (``selected["index"]``, set in the browser): its top units."""
    if not result or not selected or not 0 <= selected["index"] < len(result["tokens"]):
        raise PreventUpdate
    return token_panel(result, selected["index"], label_prefixes(state.current().store.sources()))


def register_callbacks(app: Dash, unit_max: dict) -> None:
    """``unit_max`` and the store's SAE sources are captured here so the forked background job has
    them in memory."""
    probe_attention.register_callbacks(app)
    store = app.server.extensions[state.EXTENSION].store
    sae_sources = {s.source_id: s for s in store.sources() if s.kind == SAE_FEATURE}

    @app.callback(
        Output(ids.PROBE_LOCATION, "href"),
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
        result, status = probe_job(set_progress, text, config, unit_max, sae_sources)
        return (probe_runs.run_href(result["key"]) if result else no_update), status

    app.callback(
        Output(ids.PROBE_TOP_UNITS, "children"),
        Output(ids.PROBE_TOKEN_UNITS, "children"),
        Output(ids.PROBE_COLOR_BY, "options"),
        Output(ids.PROBE_COLOR_BY, "value"),
        Input(ids.PROBE_RESULT, "data"),
    )(show_result)
    app.callback(
        Output(ids.PROBE_TOKENS, "children"),
        Input(ids.PROBE_COLOR_BY, "value"),
        Input(ids.PROBE_RESULT, "data"),
    )(colour_tokens)
    app.callback(
        Output(ids.PROBE_COLOR_BY, "options", allow_duplicate=True),
        Output(ids.PROBE_COLOR_BY, "value", allow_duplicate=True),
        Output(ids.PROBE_COLOR_UNIT_STATUS, "children"),
        Input(ids.PROBE_COLOR_UNIT, "n_submit"),
        State(ids.PROBE_COLOR_UNIT, "value"),
        State(ids.PROBE_RESULT, "data"),
        State(ids.PROBE_COLOR_BY, "options"),
        prevent_initial_call=True,
    )(choose_any_unit)
    app.callback(
        Output(ids.PROBE_TOKEN_UNITS, "children", allow_duplicate=True),
        Input(ids.PROBE_SELECTED_TOKEN, "data"),
        State(ids.PROBE_RESULT, "data"),
        prevent_initial_call=True,
    )(select_token)
