"""Pure renderers: data in, Dash components or Plotly figure dicts out. No store, no callbacks.

Untrusted text (corpus tokens, vocabulary) only ever becomes the ``children`` or ``title`` of a
component, which React renders as text, a JSON attribute that ``assets/neurodash.js`` puts in
the page as text (``token_row``), or a Plotly label escaped with ``plotly_text``.
Figures are plain dicts: building ``plotly.graph_objects`` figures costs milliseconds each.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import TypeVar

import numpy as np
from dash import dcc, html
from dash.development.base_component import Component

from neurodash.app import ids, routes
from neurodash.colors import ATTENTION, NEGATIVE, POSITIVE, SCALE, rgba, value_color
from neurodash.units import (
    HEAD,
    NEURON,
    SAE_FEATURE,
    AttentionRow,
    Example,
    Link,
    LogitEffect,
    Source,
    UnitRef,
    UnitStats,
)

FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"
C = TypeVar("C", bound=Component)
GRAPH_CONFIG: dcc.Graph.Config = {"displayModeBar": False, "responsive": True}


# --- tokens ---------------------------------------------------------------------------------
def token_row(
    tokens: Sequence[str],
    acts: Sequence[float],
    max_abs: float,
    marked_index: int | None = None,
    mode: str = "activation",
) -> html.Div:
    """A row of tokens coloured by activation, the marked token outlined, hover giving the exact value.
    With ``mode="attention"``, ``acts`` are attention weights from the marked (query) token, coloured
    in the attention colour and titled as such.

    The row is one element: its tokens and activations travel as JSON in ``data-tokens`` and
    ``assets/neurodash.js`` (``renderTokens``) builds the spans, as text. A unit page holds some
    2,000 tokens, and as Dash components they cost the server and React several times the page.
    """
    if len(tokens) != len(acts):
        raise ValueError(f"{len(tokens)} tokens but {len(acts)} activations")
    payload = {
        "tokens": list(tokens),
        "acts": [round(float(a), 4) for a in acts],
        "max_abs": float(max_abs),
        "marked": marked_index,
        **({"mode": mode} if mode != "activation" else {}),
    }
    return with_data(html.Div(className="nd-tokens"), tokens=json.dumps(payload, separators=(",", ":")))


def with_token_scale(component: C) -> C:
    """``component`` carrying the token colour scale (``colors.SCALE``), with which ``assets/neurodash.js``
    colours every token row inside it (the shell carries it around every page)."""
    return with_data(component, token_scale=json.dumps(SCALE, separators=(",", ":")))


def with_data(component: C, **values: str) -> C:
    """``component`` with the attributes ``data-<name>="value"``, ``_`` in a name written ``-`` (Dash
    takes any ``data-*`` prop, which keyword arguments cannot spell)."""
    for name, value in values.items():
        setattr(component, f"data-{name.replace('_', '-')}", value)
    return component


def example_tokens(example: Example, max_abs: float) -> html.Div:
    """The example's tokens coloured by activation, its max token outlined."""
    return token_row(example.tokens, example.acts, max_abs, example.peak)


def example_row(example: Example, max_abs: float, add_button: bool = False) -> html.Div:
    """Value and tokens; with ``add_button``, a "+" that adds the example to a curated set."""
    value = example.value
    return html.Div(
        [
            *([add_example_button(example)] if add_button else []),
            html.Span(
                f"{value:+.3f}",
                className="nd-value",
                style={"color": value_color(value)},
                title=f"sequence {example.seq_id}, token {example.pos}",
            ),
            example_tokens(example, max_abs),
        ],
        className="nd-example",
    )


def add_example_button(example: Example) -> html.Button:
    return html.Button(
        "+",
        id={"type": ids.SET_ADD_EXAMPLE, "bucket": example.bucket, "rank": example.rank},
        className="nd-add",
        title="add this example to the set named above",
    )


def bucket_title(bucket: str) -> str:
    if bucket == "top":
        return "Top activations"
    if bucket == "bottom":
        return "Bottom activations (most negative)"
    low = float(bucket[1:])
    return f"Quantile group {low:.2f}–{min(low + 0.2, 1.0):.2f} of firing tokens"


def example_sections(
    examples: Sequence[Example], max_abs: float, add_buttons: bool = False
) -> list[html.Details]:
    """One collapsible section per bucket, in the given (store) order: top, quantiles, bottom."""
    groups: dict[str, list[Example]] = {}
    for e in examples:
        groups.setdefault(e.bucket, []).append(e)
    return [
        html.Details(
            [
                html.Summary([bucket_title(bucket), html.Span(f"{len(group)}", className="nd-count")]),
                html.Div([example_row(e, max_abs, add_buttons) for e in group], className="nd-examples"),
            ],
            open=bucket in ("top", "bottom") or len(groups) <= 2,
            className="nd-section",
        )
        for bucket, group in groups.items()
    ]


# --- figures --------------------------------------------------------------------------------
def plotly_text(text: str) -> str:
    """Escape text for Plotly labels, which read a few HTML-like tags: shown verbatim, never markup."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def token_label(token: str, width: int = 32) -> str:
    """A vocabulary token for a chart axis: quoted, escapes visible, shortened, Plotly-escaped."""
    shown = repr(token)
    return plotly_text(shown if len(shown) <= width else shown[: width - 1] + "…")


def _layout(**extra) -> dict:
    base = {
        "margin": {"l": 50, "r": 10, "t": 30, "b": 40},
        "font": {"family": FONT, "size": 12},
        "paper_bgcolor": "rgba(0,0,0,0)",
        "plot_bgcolor": "rgba(0,0,0,0)",
        "showlegend": False,
        "hoverlabel": {"font": {"family": FONT}},
    }
    return base | extra


def histogram_figure(stats: UnitStats) -> dict:
    """The activation histogram as the fraction of tokens per bin, log scale, sign-coloured."""
    edges, counts = stats.hist_edges, stats.hist_counts
    total = max(sum(counts), 1)
    bins = list(pairwise(edges))
    centres = [(a + b) / 2 for a, b in bins]
    bar = {
        "type": "bar",
        "x": centres,
        "y": [c / total for c in counts],
        "width": [b - a for a, b in bins],
        "marker": {
            "color": [bin_color(a, b) for a, b in bins],
            "line": {"width": 0},
        },
        "customdata": [[a, b, c] for (a, b), c in zip(bins, counts, strict=True)],
        "hovertemplate": "[%{customdata[0]:.3f}, %{customdata[1]:.3f}): %{customdata[2]:,} tokens<br>"
        "%{y:.2%}<extra></extra>",
    }
    layout = _layout(
        title={
            "text": f"Activations · {fraction_text(stats.density)} of tokens > 0",
            "font": {"size": 13},
            "x": 0.01,
        },
        xaxis={"title": {"text": "activation"}, "zeroline": True, "zerolinecolor": "#999"},
        yaxis={
            "type": "log",
            "title": {"text": "tokens"},
            "gridcolor": "#eee",
            "dtick": 1,
            "tickformat": "~%",
        },
        bargap=0.05,
        height=260,
    )
    return {"data": [bar], "layout": layout}


ZERO_BIN = (152, 162, 179)  # a bin that holds zero: neither sign


def bin_color(low: float, high: float) -> str:
    """A histogram bin's colour: the positive or negative colour, grey for the bin around zero."""
    if low >= 0:
        return rgba(POSITIVE, 0.85)
    return rgba(NEGATIVE, 0.85) if high <= 0 else rgba(ZERO_BIN, 0.85)


def logit_figure(effects: Sequence[LogitEffect]) -> dict:
    """Top boosted and suppressed tokens (direct logit effect), side by side, strongest on top."""
    traces, axes = [], {}
    for i, (sign, color, title) in enumerate((("+", POSITIVE, "Boosted"), ("-", NEGATIVE, "Suppressed"))):
        chosen = sorted((e for e in effects if e.sign == sign), key=lambda e: e.rank)
        suffix = "" if i == 0 else "2"
        traces.append(
            {
                "type": "bar",
                "orientation": "h",
                "x": [e.value for e in chosen],
                "y": list(range(len(chosen))),
                "xaxis": f"x{suffix}",
                "yaxis": f"y{suffix}",
                "marker": {"color": rgba(color, 0.85)},
                "customdata": [token_label(e.token, 60) for e in chosen],
                "hovertemplate": "%{customdata}: %{x:+.3f}<extra></extra>",
            }
        )
        axes[f"xaxis{suffix}"] = {
            "domain": [0.0, 0.42] if i == 0 else [0.58, 1.0],
            "gridcolor": "#eee",
            "zerolinecolor": "#999",
            "title": {"text": title},
        }
        axes[f"yaxis{suffix}"] = {
            "anchor": f"x{suffix}",
            "autorange": "reversed",
            "tickvals": list(range(len(chosen))),
            "ticktext": [token_label(e.token) for e in chosen],
            "automargin": True,
        }
    return {
        "data": traces,
        "layout": _layout(height=300, margin={"l": 10, "r": 10, "t": 10, "b": 40}, **axes),
    }


LAYER_PLOTS_PER_ROW = 2  # wide enough to read a box per layer of a 30-layer model
LAYER_PLOT_HEIGHT = 320
KIND_COLORS = {NEURON: POSITIVE, SAE_FEATURE: (40, 150, 130), HEAD: ATTENTION}


def layer_distribution_figure(boxes: dict[str, dict[str, dict[str, list]]]) -> dict:
    """One panel per metric (max activation, density, scores): per layer, a box of its units,
    one colour per kind (neurons, SAE features); a log scale where a kind's median is tiny."""
    metrics = list(boxes)
    kinds = sorted({kind for per_kind in boxes.values() for kind in per_kind})
    traces, axes = [], {}
    n_cols = min(len(metrics), LAYER_PLOTS_PER_ROW)
    n_rows = -(-len(metrics) // max(n_cols, 1))
    gap, vgap = 0.08, 0.12 if n_rows > 1 else 0.0
    width = (1 - gap * (n_cols - 1)) / max(n_cols, 1)
    height = (1 - vgap * (n_rows - 1)) / max(n_rows, 1)
    for i, metric in enumerate(metrics):
        suffix = "" if i == 0 else str(i + 1)
        for kind, stats in boxes[metric].items():
            color = KIND_COLORS.get(kind, NEGATIVE)
            traces.append(
                {
                    "type": "box",
                    "name": kind.replace("_", " "),
                    "legendgroup": kind,
                    "showlegend": len(kinds) > 1 and i == 0,
                    "x": stats["layer"],
                    "q1": stats["q1"],
                    "median": stats["median"],
                    "q3": stats["q3"],
                    "lowerfence": stats["lowerfence"],
                    "upperfence": stats["upperfence"],
                    "xaxis": f"x{suffix}",
                    "yaxis": f"y{suffix}",
                    "marker": {"color": rgba(color)},
                    "line": {"width": 1},
                    "fillcolor": rgba(color, 0.35),
                    "hoverinfo": "x+y",
                }
            )
        medians = [m for stats in boxes[metric].values() for m in stats["median"]]
        col, row = i % max(n_cols, 1), i // max(n_cols, 1)
        start, top = col * (width + gap), 1 - row * (height + vgap)
        axes[f"xaxis{suffix}"] = {
            "domain": [start, start + width],
            "title": {"text": "layer"},
            "type": "category",
            "anchor": f"y{suffix}",
        }
        axes[f"yaxis{suffix}"] = {
            "anchor": f"x{suffix}",
            "domain": [top - height, top],
            "title": {"text": metric_title(metric)},
            "gridcolor": "#eee",
            "type": "log" if medians and 0 < min(medians) < 0.05 else "linear",
        }
    return {
        "data": traces,
        "layout": _layout(
            height=LAYER_PLOT_HEIGHT * n_rows,
            margin={"l": 60, "r": 10, "t": 30, "b": 40},
            boxmode="group",
            showlegend=len(kinds) > 1,
            legend={"orientation": "h", "y": 1.12, "x": 0},
            **axes,
        ),
    }


def metric_title(metric: str) -> str:
    return {
        "max_act": "max activation",
        "min_act": "min activation",
        "mean_act": "mean",
        "std_act": "std",
        "density": "density (fraction > 0)",
        "freq_10": "fraction > 10% of max",
        "freq_50": "fraction > 50% of max",
    }.get(metric, metric.replace("_", " "))


def graph(figure: dict, graph_id: str) -> dcc.Graph:
    """A figure in a box of its own height (so it never spills out of its panel), no mode bar."""
    return dcc.Graph(
        id=graph_id, figure=figure, config=GRAPH_CONFIG, style={"height": f"{figure['layout']['height']}px"}
    )


# --- panels ---------------------------------------------------------------------------------
FRACTION_METRICS = ("density", "freq_10", "freq_50")  # fractions of tokens: shown as percentages


def fraction_text(value: float) -> str:
    """A fraction of tokens, readable however small: ``12.34%``, ``0.0015% (1 in 65k)``, ``0%``."""
    if value <= 0 or value >= 0.001:
        return f"{value:.2%}"
    one_in = 1 / value
    count = (
        f"{one_in / 1e6:.3g}M"
        if one_in >= 1e6
        else f"{one_in / 1e3:.3g}k"
        if one_in >= 1e4
        else f"{one_in:,.0f}"
    )
    percent = value * 100
    digits = 1 - math.floor(math.log10(percent))  # two significant digits, never an exponent
    return f"{percent:.{digits}f}".rstrip("0").rstrip(".") + f"% (1 in {count})"


def stat_cards(items: Sequence[tuple[str, str]]) -> html.Div:
    return html.Div(
        [
            html.Div(
                [html.Div(label, className="nd-stat-label"), html.Div(value, className="nd-stat-value")],
                className="nd-stat",
            )
            for label, value in items
        ],
        className="nd-stats",
    )


def unit_stat_cards(stats: UnitStats, scores: dict[str, float]) -> html.Div:
    items = [
        ("max", f"{stats.max_act:+.3f}"),
        ("min", f"{stats.min_act:+.3f}"),
        ("mean", f"{stats.mean_act:+.4f}"),
        ("std", f"{stats.std_act:.3f}"),
        ("skew", f"{stats.skew:.2f}"),
        ("kurtosis", f"{stats.kurtosis:.1f}"),
        ("density", fraction_text(stats.density)),
        ("tokens", f"{stats.n_tokens:,}"),
    ]
    items += [
        (metric_title(m), fraction_text(v) if m in FRACTION_METRICS else f"{v:.3f}")
        for m, v in scores.items()
    ]
    return stat_cards(items)


def unit_link(label: str, ref: UnitRef, **props) -> dcc.Link:
    return dcc.Link(label, href=routes.unit_href(ref), **props)


def neighbor_list(neighbors: Sequence[tuple[UnitRef, float]], labels: Sequence[str]) -> html.Div | html.P:
    """The nearest units by cosine similarity of output directions, each a link with a bar."""
    rows = [
        (label, ref, max(cos, 0), f"{cos:.3f}", None)
        for (ref, cos), label in zip(neighbors, labels, strict=True)
    ]
    return bar_list(rows, "No neighbours stored for this unit.")


def link_list(links: Sequence[Link], labels: Sequence[str]) -> html.Div | html.P:
    """Units of another source tied to this one through an SAE decoder: share of mass, decoder weight."""
    top = max((link.share for link in links), default=0) or 1
    rows = [
        (label, link.ref, link.share / top, f"{link.share:.1%}", f"decoder weight {link.weight:+.3f}")
        for link, label in zip(links, labels, strict=True)
    ]
    return bar_list(rows, "None stored.")


def bar_list(rows: Sequence[tuple[str, UnitRef, float, str, str | None]], empty: str) -> html.Div | html.P:
    """Linked units, each with a bar (fraction 0..1), its value as text and an optional tooltip."""
    if not rows:
        return html.P(empty, className="nd-muted")
    return html.Div(
        [
            html.Div(
                [
                    unit_link(label, ref, className="nd-neighbor-link"),
                    html.Div(
                        html.Div(className="nd-bar-fill", style={"width": f"{min(fraction, 1) * 100:.0f}%"}),
                        className="nd-bar",
                    ),
                    html.Span(value, className="nd-num"),
                ],
                className="nd-neighbor",
                title=tip,
            )
            for label, ref, fraction, value, tip in rows
        ],
        className="nd-neighbors",
    )


def dead_note(stats: UnitStats) -> html.P | None:
    """A unit that never fired on the corpus: said plainly above its (empty) examples."""
    if stats.density > 0:
        return None
    return html.P(
        f"Dead: this unit never fired (> 0) on the {stats.n_tokens:,} tokens seen.", className="nd-dead-note"
    )


def unit_header(
    label: str, source: Source, prev: tuple[str, UnitRef] | None, nxt: tuple[str, UnitRef] | None, url: str
) -> html.Div:
    """Title, source, previous / next links (keyboard: k / j), and the copyable permalink."""

    def step(arrow: str, target: tuple[str, UnitRef] | None, link_id: str, key: str) -> html.Span | dcc.Link:
        if target is None:
            return html.Span(arrow, className="nd-step nd-step-off", id=link_id)
        return dcc.Link(
            f"{arrow} {target[0]}" if arrow == "←" else f"{target[0]} {arrow}",
            href=routes.unit_href(target[1]),
            id=link_id,
            className="nd-step",
            title=f"{target[0]} ({key})",
        )

    return html.Div(
        [
            html.Div(
                [
                    html.H1(label, className="nd-title"),
                    html.Span(f"{source.kind.replace('_', ' ')} · {source.hook}", className="nd-subtitle"),
                ],
                className="nd-title-block",
            ),
            html.Div(
                [step("←", prev, ids.UNIT_PREV, "k"), step("→", nxt, ids.UNIT_NEXT, "j")],
                className="nd-steps",
            ),
            html.Div(
                [
                    html.Code(url, id=ids.PERMALINK, className="nd-permalink"),
                    dcc.Clipboard(
                        target_id=ids.PERMALINK,
                        id=ids.PERMALINK_COPY,
                        title="copy the permalink",
                        className="nd-copy",
                    ),
                ],
                className="nd-permalink-box",
            ),
        ],
        className="nd-unit-header",
    )


def download_buttons(
    formats: tuple[str, ...], button_type: str = ids.DOWNLOAD_FORMAT, download_id: str = ids.DOWNLOAD
) -> html.Div:
    """One button per export format, and the download they trigger."""
    buttons = [
        html.Button(fmt.upper(), id={"type": button_type, "fmt": fmt}, className="nd-button nd-step")
        for fmt in formats
    ]
    return html.Div(
        [html.Span("Download examples", className="nd-muted"), *buttons, dcc.Download(id=download_id)],
        className="nd-downloads",
    )


def feedback(message: str, ok: bool) -> html.Span:
    """What came of an action, as text (it may quote a user's input): green if ``ok``, else red."""
    return html.Span(message, className="nd-ok" if ok else "nd-error")


def panel(title: str, *children, class_name: str = "") -> html.Section:
    return html.Section(
        [html.H2(title, className="nd-panel-title"), *children], className=f"nd-panel {class_name}".strip()
    )


def not_found(message: str, hint: str = "") -> html.Div:
    return html.Div(
        [
            html.H1("Not found", className="nd-title"),
            html.P(message, className="nd-notfound-message"),
            html.P(hint, className="nd-muted") if hint else None,
            html.P(
                [
                    dcc.Link("Overview", href=routes.OVERVIEW),
                    " · ",
                    dcc.Link("Text probe", href=routes.PROBE),
                    " · or type a unit such as L3N42 in the box above.",
                ]
            ),
        ],
        className="nd-notfound",
    )


def sources_table(sources: Sequence[Source], labels: dict[str, str | None]) -> html.Table:
    head = ["source", "kind", "hook", "layer", "units", "tokens seen", "jump"]
    rows = [
        html.Tr(
            [
                html.Td(s.source_id),
                html.Td(s.kind.replace("_", " ")),
                html.Td(html.Code(s.hook)),
                html.Td(s.layer, className="nd-num"),
                html.Td(f"{s.n_units:,}", className="nd-num"),
                html.Td(f"{s.n_tokens:,}", className="nd-num"),
                html.Td(unit_link(f"{labels[s.source_id] or s.source_id + '/'}0", UnitRef(s.source_id, 0))),
            ]
        )
        for s in sources
    ]
    return html.Table(
        [html.Thead(html.Tr([html.Th(h) for h in head])), html.Tbody(rows)], className="nd-table"
    )


@dataclass(frozen=True)
class RankedUnit:
    """A unit the probe found: its label and reference, its activation, that as a fraction of its max
    over the corpus, that max, and the token where it was read (if shown)."""

    label: str
    ref: UnitRef
    act: float
    fraction: float
    corpus_max: float
    token: str | None = None


def ranked_units(rows: Sequence[RankedUnit], empty: str) -> html.Table | html.P:
    """Units found by the probe: link, activation, the unit's own max over the corpus, the fraction of
    it (a bar), and where (if given)."""
    if not rows:
        return html.P(empty, className="nd-muted")
    with_token = any(row.token is not None for row in rows)
    head = ["unit", "activation", "its max", "of its max", *(["at token"] if with_token else [])]
    body = [
        html.Tr(
            [
                html.Td(unit_link(row.label, row.ref)),
                html.Td(f"{row.act:+.3f}", className="nd-num"),
                html.Td(f"{row.corpus_max:+.3f}", className="nd-num nd-muted"),
                html.Td(
                    html.Div(
                        [
                            html.Div(
                                html.Div(
                                    className="nd-bar-fill",
                                    style={"width": f"{min(max(row.fraction, 0), 1) * 100:.0f}%"},
                                ),
                                className="nd-bar",
                            ),
                            html.Span(f"{row.fraction:.0%}", className="nd-num"),
                        ],
                        className="nd-bar-cell",
                    )
                ),
                *([html.Td(html.Code(row.token), className="nd-token-cell")] if with_token else []),
            ]
        )
        for row in rows
    ]
    return html.Table(
        [html.Thead(html.Tr([html.Th(h) for h in head])), html.Tbody(body)], className="nd-table"
    )


# --- attention heads ------------------------------------------------------------------------
ATTENTION_SCALE = [[0.0, "rgba(255,255,255,1)"], [1.0, rgba(ATTENTION)]]


def head_heatmap_figure(
    layers: Sequence[int], n_heads: int, grid: Sequence[Sequence[float | None]], metric: str
) -> dict:
    """Layers (rows, layer 0 at the top) x heads (columns), coloured by ``metric``; the hover names the
    head (``L3H2``) and its value; a click's point has the head as x and the layer as y."""
    heatmap = {
        "type": "heatmap",
        "z": [list(row) for row in grid],
        "x": list(range(n_heads)),
        "y": list(layers),
        "text": [[f"L{layer}H{h}" for h in range(n_heads)] for layer in layers],
        "hovertemplate": "%{text}: %{z:.3f}<extra></extra>",
        "colorscale": ATTENTION_SCALE,
        "xgap": 1,
        "ygap": 1,
        "colorbar": {"title": {"text": metric_title(metric), "side": "right"}, "thickness": 12},
    }
    return {
        "data": [heatmap],
        "layout": _layout(
            height=max(220, 26 * len(layers) + 90),
            margin={"l": 50, "r": 10, "t": 10, "b": 40},
            xaxis={"title": {"text": "head"}, "dtick": 1, "side": "bottom"},
            yaxis={"title": {"text": "layer"}, "autorange": "reversed", "dtick": 1},
        ),
    }


def score_strips_figure(names: Sequence[str], values: Mapping[str, Sequence[float | None]], me: int) -> dict:
    """One strip per metric: every head's value as a dot (hover: its name), head ``me`` a large marker."""
    metrics = list(values)
    traces, axes = [], {}
    rows = max(len(metrics), 1)
    for i, metric in enumerate(metrics):
        suffix = "" if i == 0 else str(i + 1)
        column = list(values[metric])
        top, bottom = 1 - i / rows, 1 - (i + 1) / rows
        common = {"xaxis": f"x{suffix}", "yaxis": f"y{suffix}", "type": "scatter", "mode": "markers"}
        traces.append(
            common
            | {
                "x": column,
                "y": [((k * 0.618) % 1) - 0.5 for k in range(len(column))],  # a steady jitter
                "text": list(names),
                "marker": {"size": 5, "color": rgba(ATTENTION, 0.3)},
                "hovertemplate": "%{text}: %{x:.3f}<extra></extra>",
            }
        )
        traces.append(
            common
            | {
                "x": [column[me]],
                "y": [0],
                "text": [names[me]],
                "marker": {"size": 13, "symbol": "diamond", "color": rgba(POSITIVE), "line": {"width": 1}},
                "hovertemplate": "%{text} (this head): %{x:.3f}<extra></extra>",
            }
        )
        axes[f"xaxis{suffix}"] = {"anchor": f"y{suffix}", "gridcolor": "#eee", "zeroline": False}
        axes[f"yaxis{suffix}"] = {
            "domain": [bottom + 0.25 / rows, top],
            "range": [-0.8, 0.8],
            "tickvals": [0],
            "ticktext": [metric_title(metric)],  # a label read across, beside its strip
            "showgrid": False,
            "zeroline": False,
        }
    return {
        "data": traces,
        "layout": _layout(
            height=max(120, 56 * rows + 20), margin={"l": 160, "r": 10, "t": 10, "b": 10}, **axes
        ),
    }


def attention_strip_figure(tokens: Sequence[str], row: AttentionRow, query: int) -> dict:
    """One stored query row as a 1 x window heat map: the query token (its label marked) and its
    attention to every token of the window, token texts on the axis."""
    labels = [f"{i}: {token_label(t, 14)}" for i, t in enumerate(tokens)]
    heatmap = {
        "type": "heatmap",
        "z": [[round(w, 4) for w in row.pattern]],
        "x": list(range(len(row.pattern))),
        "y": [f"query {query}"],
        "customdata": [labels],
        "hovertemplate": "key %{customdata}: %{z:.3f}<extra></extra>",
        "colorscale": ATTENTION_SCALE,
        "zmin": 0,
        "colorbar": {"thickness": 10, "len": 1.2},
    }
    return {
        "data": [heatmap],
        "layout": _layout(
            height=200,
            margin={"l": 120, "r": 10, "t": 10, "b": 110},
            xaxis={"tickvals": list(range(len(labels))), "ticktext": labels, "tickangle": -60},
            yaxis={
                "ticktext": [f"{query}: {token_label(tokens[query], 14)}"],
                "tickvals": [f"query {query}"],
            },
        ),
    }


def attention_pattern_figure(tokens: Sequence[str], pattern: np.ndarray, title: str) -> dict:
    """A full query x key pattern (the text probe's): queries down, keys across, token texts on both."""
    labels = [f"{i}: {token_label(t, 14)}" for i, t in enumerate(tokens)]
    heatmap = {
        "type": "heatmap",
        "z": np.round(np.asarray(pattern, dtype=np.float64), 3).tolist(),
        "customdata": [[[q, k] for k in labels] for q in labels],
        "hovertemplate": "query %{customdata[0]}<br>key %{customdata[1]}: %{z:.3f}<extra></extra>",
        "colorscale": ATTENTION_SCALE,
        "zmin": 0,
        "zmax": 1,
        "colorbar": {"thickness": 10},
    }
    ticks = {"tickvals": list(range(len(labels))), "ticktext": labels, "tickfont": {"size": 9}}
    size = min(max(300, 14 * len(tokens) + 160), 900)
    return {
        "data": [heatmap],
        "layout": _layout(
            height=size,
            margin={"l": 110, "r": 10, "t": 30, "b": 110},
            title={"text": plotly_text(title), "font": {"size": 13}, "x": 0.01},
            xaxis={**ticks, "tickangle": -60, "title": {"text": "key"}},
            yaxis={**ticks, "autorange": "reversed", "title": {"text": "query"}},
        ),
    }


def attention_example_row(example: Example, row: AttentionRow | None, add_button: bool = False) -> html.Div:
    """A head's example: its output norm at the query, and the window coloured by the query's
    attention (relative to the row's largest weight), the query outlined; without a stored row, the
    window coloured by the norm. With ``add_button``, a "+" that adds the example to a curated set."""
    value = example.value
    tokens = (
        token_row(example.tokens, row.pattern, max(max(row.pattern), 1e-9), example.peak, mode="attention")
        if row is not None and len(row.pattern) == len(example.tokens)
        else example_tokens(example, max(max(example.acts), 1e-9))
    )
    before = (
        f", {row.before:.1%} of its attention before the window" if row and row.before is not None else ""
    )
    return html.Div(
        [
            *([add_example_button(example)] if add_button else []),
            html.Span(
                f"{value:.3f}",
                className="nd-value",
                style={"color": rgba(ATTENTION)},
                title=f"output norm at the query; sequence {example.seq_id}, token {example.pos}{before}",
            ),
            tokens,
        ],
        className="nd-example",
    )


def empty_figure(height: int = 300) -> dict:
    """A blank figure, for a graph whose data comes later."""
    hidden = {"visible": False}
    return {"data": [], "layout": _layout(height=height, xaxis=hidden, yaxis=hidden)}


def attention_arcs(tokens: Sequence[str], pattern: np.ndarray, threshold: float, limit: int) -> html.Div:
    """The pattern [query, key] as arcs over the tokens, CircuitsVis-style: one arc from each query to
    each earlier key it attends to with at least ``threshold`` (the ``limit`` strongest). Tokens and
    arcs travel as JSON in ``data-arcs``; ``assets/neurodash.js`` (``renderArcs``) draws them, tokens as text."""
    below = np.tril(np.asarray(pattern, dtype=np.float32), -1)
    queries, keys = np.nonzero(below >= threshold)
    weights = below[queries, keys]
    order = np.argsort(-weights, kind="stable")[:limit]
    arcs = [[int(queries[i]), int(keys[i]), round(float(weights[i]), 3)] for i in order]
    payload = {"tokens": list(tokens), "arcs": arcs, "scale": SCALE["attention"]}
    note = f"{len(arcs)} arcs: attention of at least {threshold:g} from a token to an earlier one"
    return html.Div(
        [
            html.P(
                note + (f" (the {limit} strongest)" if len(weights) > limit else ""), className="nd-muted"
            ),
            with_data(html.Div(className="nd-arcs"), arcs=json.dumps(payload, separators=(",", ":"))),
        ]
    )
