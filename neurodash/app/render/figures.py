"""Plotly figures as plain dicts (histogram, logit effects, layer distributions, heads' heat maps and
attention patterns), and the graph that shows one. Labels from the vocabulary or the corpus are
escaped (``plotly_text``): Plotly reads a few HTML-like tags in them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise

import numpy as np
from dash import dcc

from neurodash.app.render.formats import fraction_text, metric_title
from neurodash.colors import ATTENTION, NEGATIVE, POSITIVE, figure_layout, rgba
from neurodash.units import HEAD, NEURON, SAE_FEATURE, AttentionRow, LogitEffect, UnitStats

GRAPH_CONFIG: dcc.Graph.Config = {"displayModeBar": False, "responsive": True}


def plotly_text(text: str) -> str:
    """Escape text for Plotly labels, which read a few HTML-like tags: shown verbatim, never markup."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def token_label(token: str, width: int = 32) -> str:
    """A vocabulary token for a chart axis: quoted, escapes visible, shortened, Plotly-escaped."""
    shown = repr(token)
    return plotly_text(shown if len(shown) <= width else shown[: width - 1] + "…")


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
    layout = figure_layout(
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
        "layout": figure_layout(height=300, margin={"l": 10, "r": 10, "t": 10, "b": 40}, **axes),
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
        "layout": figure_layout(
            height=LAYER_PLOT_HEIGHT * n_rows,
            margin={"l": 60, "r": 10, "t": 30, "b": 40},
            boxmode="group",
            showlegend=len(kinds) > 1,
            legend={"orientation": "h", "y": 1.12, "x": 0},
            **axes,
        ),
    }


def graph(figure: dict, graph_id: str) -> dcc.Graph:
    """A figure in a box of its own height (so it never spills out of its panel), no mode bar."""
    return dcc.Graph(
        id=graph_id, figure=figure, config=GRAPH_CONFIG, style={"height": f"{figure['layout']['height']}px"}
    )


def empty_figure(height: int = 300) -> dict:
    """A blank figure, for a graph whose data comes later."""
    hidden = {"visible": False}
    return {"data": [], "layout": figure_layout(height=height, xaxis=hidden, yaxis=hidden)}


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
        "layout": figure_layout(
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
        "layout": figure_layout(
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
        "layout": figure_layout(
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
        "layout": figure_layout(
            height=size,
            margin={"l": 110, "r": 10, "t": 30, "b": 110},
            title={"text": plotly_text(title), "font": {"size": 13}, "x": 0.01},
            xaxis={**ticks, "tickangle": -60, "title": {"text": "key"}},
            yaxis={**ticks, "autorange": "reversed", "title": {"text": "query"}},
        ),
    }
