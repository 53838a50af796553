"""Head page (``routes.HEAD_TEMPLATE``, ``/head/<layer>/<head>``): what one attention head does. A head
is a unit (source ``L{layer}.attn``), so ``/unit/L3.attn/2`` shows this page too (``pages/unit.py``).

Its scores beside every head's, its top examples coloured by where the query looked, one example's
stored query row as a strip, its OV logit effects, and the heads it resembles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from dash import Dash, Input, Output, dcc, html
from dash.exceptions import PreventUpdate

from neurodash.app import current_unit, ids, routes, state
from neurodash.app.data import (
    adjacent_units,
    closest_heads,
    head_frame,
    head_metrics,
    label_prefixes,
    standardised_scores,
    unit_label,
)
from neurodash.app.panels import downloads
from neurodash.app.panels import sets as sets_panel
from neurodash.app.render import figures, highlights, widgets
from neurodash.app.state import AppState
from neurodash.storage import Store
from neurodash.units import HEAD, AttentionRow, Example, UnitRef, neuron_source_id

WINDOW_NOTE = (
    "Each example stores one query row: the attention from the outlined query token to each token of "
    "the window (coloured relative to the row's largest weight; hover a token for the exact weight). "
    "Attention to tokens before the window is not shown, and a full query x key pattern needs the live "
    "model: type the text into the Probe."
)


def resolve(store: Store, layer: str | None, head: str | None) -> UnitRef | None:
    """The head the path's variables name, or None when the store has no such head."""
    ref = routes.head_ref(layer, head)
    if ref is None or not store.has_unit(ref) or store.source(ref.source_id).kind != HEAD:
        return None
    return ref


def title(layer: str | None = None, head: str | None = None, **_query) -> str:
    return f"L{layer}H{head} · neurodash"


def layout(layer: str | None = None, head: str | None = None, **_query) -> html.Div:
    store = state.current().store
    ref = resolve(store, layer, head)
    if ref is None:
        heads = [s for s in store.sources() if s.kind == HEAD]
        hint = (
            f"Its heads are in layers {', '.join(str(s.layer) for s in heads)}, {heads[0].n_units} per layer."
            if heads
            else "This store has no attention heads."
        )
        return widgets.not_found(f"This store has no head {layer}/{head}.", hint)
    return page(store, ref)


@dataclass(frozen=True)
class AllHeads:
    """Every head of the store and its scores, as each head page compares its head with them: the
    same for every page, built once per app (``AppState.once``)."""

    frame: pd.DataFrame  # ``data.head_frame``
    metrics: list[str]  # ``data.head_metrics``
    values: dict[str, list[float | None]]  # per metric, every head's value (4 decimals; None: missing)
    z: np.ndarray  # ``data.standardised_scores``, for the closest heads

    @classmethod
    def of(cls, app_state: AppState) -> AllHeads:
        frame = head_frame(app_state.units)
        metrics = head_metrics(frame, app_state.score_metrics)
        values = {m: [None if pd.isna(v) else round(float(v), 4) for v in frame[m]] for m in metrics}
        return cls(frame, metrics, values, standardised_scores(frame, metrics))


def page(store: Store, ref: UnitRef) -> html.Div:
    """The page of head ``ref`` (a unit of a source of heads in ``store``)."""
    all_heads = state.current().once(AllHeads.of)
    sources = store.sources()
    prefixes = label_prefixes(sources)
    source = store.source(ref.source_id)
    heads, metrics = all_heads.frame, all_heads.metrics
    prev, nxt = adjacent_units(ref, sources)
    examples = store.examples(ref)
    rows = {(r.bucket, r.rank): r for r in store.attention_rows(ref)}
    me = int(((heads["source_id"] == ref.source_id) & (heads["unit"] == ref.unit)).to_numpy().argmax())
    return html.Div(
        [
            current_unit.holder(ref),
            widgets.unit_header(
                unit_label(ref, prefixes),
                source,
                (unit_label(prev, prefixes), prev) if prev else None,
                (unit_label(nxt, prefixes), nxt) if nxt else None,
                state.permalink(routes.unit_href(ref)),
            ),
            html.P(layer_links(store, source.layer), className="nd-muted"),
            html.Div(
                [
                    widgets.panel(
                        "Scores (this head ◆ among all heads)",
                        score_cards(store, ref),
                        figures.graph(
                            figures.score_strips_figure(list(heads["name"]), all_heads.values, me),
                            ids.HEAD_SCORES,
                        )
                        if metrics
                        else html.P("No scores stored for heads.", className="nd-muted"),
                    ),
                    widgets.panel(
                        "OV logit effect",
                        figures.graph(figures.logit_figure(store.logit_effects(ref)), ids.HEAD_LOGITS),
                    ),
                    resembling_panel(store, ref, all_heads, prefixes),
                ],
                className="nd-grid-3",
            ),
            pattern_panel(examples, rows),
            downloads.layout(),
            sets_panel.layout(),
            html.Div(
                id=ids.TOKEN_INSPECTOR, className="nd-inspector", children="Hover a token to see its weight."
            ),
            widgets.panel(
                "Examples", html.P(WINDOW_NOTE, className="nd-muted"), *example_sections(examples, rows)
            ),
            html.P(
                "Keys: j or → next head · k or ← previous · / jump to a unit (L3H2)",
                className="nd-muted nd-keys",
            ),
        ]
    )


def layer_links(store: Store, layer: int) -> list:
    """Links to the layer's neurons (if the store has them), the heads page and the overview."""
    neurons = UnitRef(neuron_source_id(layer), 0)
    return [
        *([widgets.unit_link(f"Layer {layer}'s neurons", neurons), " · "] if store.has_unit(neurons) else []),
        dcc.Link("All heads", href=routes.HEADS),
        " · ",
        dcc.Link("Overview", href=routes.OVERVIEW),
    ]


def score_cards(store: Store, ref: UnitRef) -> html.Div:
    stats = store.unit_stats(ref)
    activation = store.source(ref.source_id).config.get("activation", "z_norm")
    norm = "output norm" if activation == "out_norm" else "‖z‖"
    items = [(f"max {norm}", f"{stats.max_act:.3f}"), (f"mean {norm}", f"{stats.mean_act:.3f}")]
    items += [("tokens", f"{stats.n_tokens:,}")]
    return widgets.stat_cards(items)


def resembling_panel(store: Store, ref: UnitRef, all_heads: AllHeads, prefixes: dict) -> html.Section:
    """The stored neighbours (similar OV output), or else the heads with the closest score vectors."""
    neighbors = store.neighbors(ref)
    if neighbors:
        return widgets.panel(
            "Similar heads (cosine of OV output)",
            widgets.neighbor_list(neighbors, [unit_label(r, prefixes) for r, _ in neighbors]),
        )
    closest = closest_heads(all_heads.frame, ref, all_heads.metrics, z=all_heads.z)
    top = max((d for _, d in closest), default=1.0) or 1.0
    rows = [
        (unit_label(r, prefixes), r, 1 - d / (top * 1.05), f"{d:.2f}", "distance of standardised scores")
        for r, d in closest
    ]
    return widgets.panel("Heads with the closest scores", widgets.bar_list(rows, "No other heads."))


def pattern_panel(examples: list[Example], rows: dict[tuple[str, int], AttentionRow]) -> html.Section:
    """One example's stored query row, as a 1 x window strip (which example: a dropdown)."""
    shown = [e for e in examples if (e.bucket, e.rank) in rows]
    if not shown:
        return widgets.panel(
            "Attention of one example",
            html.P("No attention rows stored for this head.", className="nd-muted"),
        )
    options = [
        {
            "label": f"{highlights.bucket_title(e.bucket).split(' (')[0]} #{e.rank}: query {e.max_token!r}",
            "value": f"{e.bucket}/{e.rank}",
        }
        for e in shown
    ]
    first = shown[0]
    return widgets.panel(
        "Attention of one example (query x key)",
        html.P(
            "The store keeps one query row per example (the query position's attention over the window), "
            "so the pattern is a 1 x window strip here; the Probe shows the full pattern of any text.",
            className="nd-muted",
        ),
        dcc.Dropdown(
            options, options[0]["value"], id=ids.HEAD_EXAMPLE, clearable=False, className="nd-color-by"
        ),
        figures.graph(
            figures.attention_strip_figure(first.tokens, rows[(first.bucket, first.rank)], first.peak),
            ids.HEAD_PATTERN,
        ),
    )


def example_sections(
    examples: list[Example], rows: dict[tuple[str, int], AttentionRow]
) -> list[html.Details]:
    """The head's examples by bucket, each drawn with its attention row; the top section open."""
    return highlights.example_sections(
        examples,
        row=lambda e: highlights.attention_example_row(e, rows.get((e.bucket, e.rank)), add_button=True),
        title=lambda bucket: highlights.bucket_title(bucket).replace("activations", "output norms"),
        opened=lambda bucket, _: bucket == "top",
    )


def show_example(choice: str | None, holder: object) -> dict:
    """The strip of the chosen example (``bucket/rank``) of the page's head."""
    ref = current_unit.read(holder)
    if ref is None or not isinstance(choice, str) or "/" not in choice:
        raise PreventUpdate
    bucket, _, rank = choice.rpartition("/")
    if not rank.isdigit():
        raise PreventUpdate
    store = state.current().store
    example = next((e for e in store.examples(ref, [bucket]) if e.rank == int(rank)), None)
    row = next((r for r in store.attention_rows(ref, [bucket]) if r.rank == int(rank)), None)
    if example is None or row is None:
        raise PreventUpdate
    return figures.attention_strip_figure(example.tokens, row, example.peak)


def register_callbacks(app: Dash) -> None:
    """The strip's example choice (downloads and sets are the unit page's, registered there)."""
    app.callback(
        Output(ids.HEAD_PATTERN, "figure"),
        Input(ids.HEAD_EXAMPLE, "value"),
        current_unit.state(),
        prevent_initial_call=True,
    )(show_example)
