"""The text probe's attention: every head's pattern on the probed text, as a heat map (query x key)
and as arcs over the tokens (drawn by ``assets/neurodash.js`` as SVG paths, tokens as text), and the
heads that attend most to a clicked token from the last one.

The patterns of every layer (float16, [layers, heads, pos, pos]) are too large for the browser: the
probe's job saves them in the app's cache folder (``save_patterns``) and puts only their key in its
result; these callbacks read them back on the server.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import numpy as np
from dash import Dash, Input, Output, State, dcc, html
from dash.exceptions import PreventUpdate

from neurodash import paths
from neurodash.app import ids, routes, state
from neurodash.app.render import figures, highlights, widgets
from neurodash.units import HEAD, UnitRef, head_source_id

ATTENTION_KEY = "attention"  # precompute.live.probe.ATTENTION: the patterns among probe_text's activations
BOS_LABEL = "<bos>"  # the BOS position's label (dropped from the probe's tokens, kept in the patterns)
KEEP_FILES = 16  # the latest probes' patterns kept in the cache folder
MAX_HEATMAP_TOKENS = 256  # a larger pattern shows its first tokens only (the arcs show every token)
ARC_THRESHOLD = 0.1  # weaker attention draws no arc
MAX_ARCS = 400
TOP_HEADS = 12
_KEY = re.compile(r"[0-9a-f]{32}")


def folder() -> Path:
    return paths.home() / "cache" / "attention"


def save_patterns(patterns: np.ndarray, where: Path | None = None) -> str:
    """Keep ``patterns`` [layers, heads, pos, pos] under a new key (the oldest beyond ``KEEP_FILES`` go)."""
    where = where or folder()
    where.mkdir(parents=True, exist_ok=True)
    key = uuid.uuid4().hex
    np.save(where / f"{key}.npy", patterns.astype(np.float16, copy=False))
    for old in sorted(where.glob("*.npy"), key=lambda p: p.stat().st_mtime)[:-KEEP_FILES]:
        old.unlink(missing_ok=True)
    return key


def load_patterns(key: object, where: Path | None = None) -> np.ndarray | None:
    """The patterns saved under ``key``, or None (no such key, or gone)."""
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        return None
    path = (where or folder()) / f"{key}.npy"
    try:
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return None


def attention_info(tokens: list[str], patterns: np.ndarray) -> dict:
    """What the probe's result carries about its patterns (``key`` is added once saved)."""
    offset = patterns.shape[-1] - len(tokens)
    return {
        "tokens": ([BOS_LABEL] if offset else []) + list(tokens),
        "offset": offset,
        "layers": int(patterns.shape[0]),
        "heads": int(patterns.shape[1]),
    }


def layout() -> html.Section:
    """The attention panel: which head, its pattern as a heat map and as arcs, the heads at a token."""
    dropdown = {"clearable": False, "searchable": False, "className": "nd-small-dropdown"}
    return widgets.panel(
        "Attention",
        html.Div(
            [
                html.Span("Layer", className="nd-muted"),
                dcc.Dropdown(id=ids.PROBE_ATTN_LAYER, options=[], **dropdown),
                html.Span("head", className="nd-muted"),
                dcc.Dropdown(id=ids.PROBE_ATTN_HEAD, options=[], **dropdown),
                html.Span(
                    "· click a token above to list the heads that attend most to it from the last token",
                    className="nd-muted",
                ),
            ],
            className="nd-toolbar",
        ),
        html.Div(id=ids.PROBE_ATTN_ARCS),
        html.Div(id=ids.PROBE_ATTN_TOP_HEADS, style={"maxWidth": "560px"}),
        dcc.Graph(id=ids.PROBE_ATTN_FIGURE, figure=figures.empty_figure(), config=figures.GRAPH_CONFIG),
    )


def head_choices(result: dict | None) -> tuple:
    """Layer and head options once a probe has run (layer 0, head 0 first)."""
    info = (result or {}).get("attention")
    if not info:
        return [], None, [], None
    layers = [{"label": str(i), "value": i} for i in range(info["layers"])]
    heads = [{"label": str(i), "value": i} for i in range(info["heads"])]
    return layers, 0, heads, 0


def show_head(layer: int | None, head: int | None, result: dict | None) -> tuple:
    """The chosen head's pattern on the text: the heat map and the arcs."""
    info = (result or {}).get("attention")
    patterns = load_patterns(info.get("key")) if info else None
    if info is None or patterns is None or layer is None or head is None:
        return figures.empty_figure(), html.P("Run the probe to see attention.", className="nd-muted")
    if not (0 <= layer < patterns.shape[0] and 0 <= head < patterns.shape[1]):
        raise PreventUpdate
    pattern = np.asarray(patterns[layer, head], dtype=np.float32)
    tokens, n = info["tokens"], min(len(info["tokens"]), MAX_HEATMAP_TOKENS)
    title = f"L{layer}H{head}" + (f" · the first {n} of {len(tokens)} tokens" if n < len(tokens) else "")
    return (
        figures.attention_pattern_figure(tokens[:n], pattern[:n, :n], title),
        highlights.attention_arcs(tokens, pattern, ARC_THRESHOLD, MAX_ARCS),
    )


def heads_at_token(selected: dict | None, result: dict | None) -> html.Div:
    """The heads attending most from the last token to the clicked one (links to the store's heads)."""
    info = (result or {}).get("attention")
    patterns = load_patterns(info.get("key")) if info else None
    if not selected or info is None or patterns is None:
        raise PreventUpdate
    key = selected.get("index")
    if not isinstance(key, int) or not 0 <= key < len(info["tokens"]) - info["offset"]:
        raise PreventUpdate
    position = key + info["offset"]
    weights = np.asarray(patterns[:, :, -1, position], dtype=np.float32)  # [layers, heads]
    order = np.argsort(-weights, axis=None, kind="stable")[:TOP_HEADS]
    store = state.current().store
    rows = []
    for flat in order:
        layer, head = divmod(int(flat), weights.shape[1])
        name = f"L{layer}H{head}"
        ref = UnitRef(head_source_id(layer), head)
        known = store.has_unit(ref) and store.source(ref.source_id).kind == HEAD
        rows.append(
            html.Tr(
                [
                    html.Td(dcc.Link(name, href=routes.head_href(layer, head)) if known else name),
                    html.Td(f"{weights[layer, head]:.3f}", className="nd-num"),
                ]
            )
        )
    last = info["tokens"][-1]
    return html.Div(
        [
            html.P(
                [
                    "Heads attending most from the last token ",
                    html.Code(repr(last)),
                    " to ",
                    html.Code(repr(info["tokens"][position])),
                    f" (token {key} of the text)",
                ],
                className="nd-muted",
            ),
            html.Table(
                [html.Thead(html.Tr([html.Th("head"), html.Th("attention")])), html.Tbody(rows)],
                className="nd-table",
            ),
        ]
    )


def register_callbacks(app: Dash) -> None:
    app.callback(
        Output(ids.PROBE_ATTN_LAYER, "options"),
        Output(ids.PROBE_ATTN_LAYER, "value"),
        Output(ids.PROBE_ATTN_HEAD, "options"),
        Output(ids.PROBE_ATTN_HEAD, "value"),
        Input(ids.PROBE_RESULT, "data"),  # a saved run comes with the page (``/probe?run=KEY``)
    )(head_choices)
    app.callback(
        Output(ids.PROBE_ATTN_FIGURE, "figure"),
        Output(ids.PROBE_ATTN_ARCS, "children"),
        Input(ids.PROBE_ATTN_LAYER, "value"),
        Input(ids.PROBE_ATTN_HEAD, "value"),
        State(ids.PROBE_RESULT, "data"),
        prevent_initial_call=True,
    )(show_head)
    app.callback(
        Output(ids.PROBE_ATTN_TOP_HEADS, "children"),
        Input(ids.PROBE_SELECTED_TOKEN, "data"),
        State(ids.PROBE_RESULT, "data"),
        prevent_initial_call=True,
    )(heads_at_token)
