"""The circuit lab's figures, as Plotly figure dicts (the app draws them with ``dcc.Graph``; notebooks
get ``plotly.graph_objects.Figure`` from ``LabRun.figure(name)``). Token text is escaped: Plotly reads
a few HTML-like tags in labels, and a prompt's text is shown verbatim, never as markup.

Each figure is ``FIGURES[name](run, prompt, **options)``; those over every prompt ignore ``prompt``
and average with each prompt weighted by its clean - corrupted gap (``lab.gap_weighted_mean``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from neurodash.colors import figure_layout
from neurodash.lab_run import LabRun

DIVERGING = [[0.0, "#1e6ec8"], [0.5, "#f7f7f7"], [1.0, "#f07814"]]  # blue - white - orange (colors.py)
SEQUENTIAL = [[0.0, "#f7f7f7"], [1.0, "#f07814"]]
Figure = dict[str, Any]


def escape(text: str) -> str:
    """Text for a Plotly label, shown verbatim."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def token_label(token: str, width: int = 16) -> str:
    shown = repr(token)
    return escape(shown if len(shown) <= width else shown[: width - 1] + "…")


def _layout(height: int, **extra: Any) -> dict[str, Any]:
    return figure_layout(**({"height": height, "margin": {"l": 60, "r": 10, "t": 30, "b": 50}} | extra))


def _position_axis(tokens: Sequence[str], title: str = "position (token)") -> dict[str, Any]:
    """Positions as numbers (a repeated token stays its own column), labelled by their tokens."""
    return {
        "title": {"text": title},
        "tickmode": "array",
        "tickvals": list(range(len(tokens))),
        "ticktext": [f"{i}:{token_label(t, 10)}" for i, t in enumerate(tokens)],
    }


def _nullable(values: np.ndarray) -> list:
    """A 2-D array as nested lists, NaN as None (a gap in a Plotly heat map)."""
    return [[float(v) if np.isfinite(v) else None for v in row] for row in values]


def _symmetric(values: np.ndarray) -> float:
    finite = np.abs(values[np.isfinite(values)])
    return float(finite.max()) if finite.size and finite.max() > 0 else 1.0


def _head_heatmap(
    values: np.ndarray, title: str, colorbar: str, hover: str, probabilities: bool = False
) -> Figure:
    """``[layer, head]`` values, diverging around 0 (or 0 to 1 for ``probabilities``); hovering names the head."""
    L, H = values.shape
    bound = _symmetric(values)
    names = [[f"L{layer}H{h}" for h in range(H)] for layer in range(L)]
    trace = {
        "type": "heatmap",
        "z": _nullable(values),
        "x": list(range(H)),
        "y": list(range(L)),
        "customdata": names,
        "colorscale": SEQUENTIAL if probabilities else DIVERGING,
        "zmin": 0 if probabilities else -bound,
        "zmax": 1 if probabilities else bound,
        "colorbar": {"title": {"text": colorbar}, "thickness": 12},
        "hovertemplate": "%{customdata}<br>" + hover + " %{z:.3f}<extra></extra>",
    }
    height = max(260, min(640, 60 + 16 * L))
    return {
        "data": [trace],
        "layout": _layout(
            height,
            title={"text": title, "font": {"size": 13}},
            xaxis={"title": {"text": "head"}, "dtick": 1},
            yaxis={"title": {"text": "layer"}, "autorange": "reversed", "dtick": max(1, L // 10)},
        ),
    }


def _layer_bars(values: np.ndarray, title: str, axis: str) -> Figure:
    finite = np.where(np.isfinite(values), values, 0.0)
    trace = {
        "type": "bar",
        "x": [f"L{layer}" for layer in range(len(values))],
        "y": finite.tolist(),
        "marker": {"color": ["#f07814" if v >= 0 else "#1e6ec8" for v in finite]},
        "hovertemplate": "%{x} MLP<br>" + axis + " %{y:.3f}<extra></extra>",
    }
    return {
        "data": [trace],
        "layout": _layout(
            240,
            title={"text": title, "font": {"size": 13}},
            xaxis={"title": {"text": "MLP layer"}},
            yaxis={"title": {"text": axis}, "gridcolor": "#eee"},
        ),
    }


# --- per prompt ----------------------------------------------------------------------------------
def predictions(run: LabRun, prompt: int = 0) -> Figure:
    preds = run.analyses[prompt].predictions
    answer = run.prompts[prompt].answer_id
    trace = {
        "type": "bar",
        "orientation": "h",
        "x": [p.prob for p in preds],
        "y": [f"{rank + 1}. {token_label(p.token, 20)}" for rank, p in enumerate(preds)],
        "marker": {"color": ["#f07814" if p.token_id == answer else "#98a2b3" for p in preds]},
        "hovertemplate": "%{y}<br>probability %{x:.3f}<extra></extra>",
    }
    return {
        "data": [trace],
        "layout": _layout(
            280,
            title={"text": "Next-token predictions (the answer in orange)", "font": {"size": 13}},
            margin={"l": 110, "r": 10, "t": 30, "b": 50},
            xaxis={"title": {"text": "probability"}, "rangemode": "tozero", "gridcolor": "#eee"},
            yaxis={"autorange": "reversed", "automargin": True},
        ),
    }


def logit_lens(run: LabRun, prompt: int = 0) -> Figure:
    """The answer's probability after every layer at every position; hover: its rank, the top token."""
    lens, p = run.analyses[prompt].lens, run.prompts[prompt]
    L, P = lens.answer_prob.shape
    custom = [
        [
            [int(lens.answer_rank[layer, pos]), token_label(lens.top_tokens[layer][pos], 24)]
            for pos in range(P)
        ]
        for layer in range(L)
    ]
    trace = {
        "type": "heatmap",
        "z": lens.answer_prob.tolist(),
        "x": list(range(P)),
        "y": list(range(L)),
        "customdata": custom,
        "colorscale": SEQUENTIAL,
        "zmin": 0,
        "zmax": 1,
        "colorbar": {"title": {"text": "P(answer)"}, "thickness": 12},
        "hovertemplate": "layer %{y}, position %{x}<br>P(answer) %{z:.3f}, rank %{customdata[0]}"
        "<br>top token %{customdata[1]}<extra></extra>",
    }
    return {
        "data": [trace],
        "layout": _layout(
            max(260, min(640, 60 + 14 * L)),
            title={"text": f"Logit lens: P({token_label(p.answer)}) after each layer", "font": {"size": 13}},
            xaxis=_position_axis(p.tokens),
            yaxis={"title": {"text": "layer"}, "dtick": max(1, L // 10)},
        ),
    }


def attribution_heads(run: LabRun, prompt: int = 0) -> Figure:
    return _head_heatmap(
        run.analyses[prompt].attribution.heads,
        f"Direct logit attribution of each head to {run.prompts[prompt].metric_name}",
        "DLA",
        "direct effect",
    )


def attribution_mlps(run: LabRun, prompt: int = 0) -> Figure:
    return _layer_bars(
        run.analyses[prompt].attribution.mlps, "Direct logit attribution of each MLP", "direct effect"
    )


def attention(run: LabRun, prompt: int = 0, layer: int = 0, head: int = 0) -> Figure:
    """One head's pattern: query x key, lower triangle."""
    a = run.analyses[prompt].attention
    pattern = a.patterns[layer, head]
    P = pattern.shape[0]
    masked = [[float(pattern[q, k]) if k <= q else None for k in range(P)] for q in range(P)]
    trace = {
        "type": "heatmap",
        "z": masked,
        "x": list(range(P)),
        "y": list(range(P)),
        "colorscale": SEQUENTIAL,
        "zmin": 0,
        "zmax": 1,
        "colorbar": {"title": {"text": "attention"}, "thickness": 12},
        "hovertemplate": "query %{y} → key %{x}<br>attention %{z:.3f}<extra></extra>",
    }
    return {
        "data": [trace],
        "layout": _layout(
            max(280, min(560, 80 + 28 * P)),
            title={"text": f"Attention of L{layer}H{head}", "font": {"size": 13}},
            xaxis=_position_axis(a.tokens, "key (attended to)"),
            yaxis=_position_axis(a.tokens, "query") | {"autorange": "reversed"},
        ),
    }


def attention_back(run: LabRun, prompt: int = 0, back: int = 2) -> Figure:
    """Every head's attention from the last token to ``back`` positions before it."""
    values = run.analyses[prompt].attention.last_token_to(back)
    return _head_heatmap(
        values, f"Attention of the last token to {back} back", "attention", "attention", probabilities=True
    )


def patching_resid(run: LabRun, prompt: int = 0) -> Figure:
    """Residual stream patched at one layer x position (clean into corrupted): 1 = clean behaviour."""
    values, p = run.patching.resid[prompt], run.prompts[prompt]
    L, P = values.shape
    trace = {
        "type": "heatmap",
        "z": _nullable(values),
        "x": list(range(P)),
        "y": list(range(L)),
        "colorscale": DIVERGING,
        "zmin": -1,
        "zmax": 1,
        "colorbar": {"title": {"text": "restored"}, "thickness": 12},
        "hovertemplate": "layer %{y}, position %{x}<br>restored %{z:.3f}<extra></extra>",
    }
    return {
        "data": [trace],
        "layout": _layout(
            max(260, min(640, 60 + 14 * L)),
            title={
                "text": "Patching the residual stream (clean → corrupted; 1 = clean)",
                "font": {"size": 13},
            },
            xaxis=_position_axis(p.tokens),
            yaxis={"title": {"text": "layer (resid_pre)"}, "dtick": max(1, L // 10)},
        ),
    }


# --- over every prompt ---------------------------------------------------------------------------
def ablation_heads(run: LabRun, prompt: int = 0) -> Figure:
    a = run.ablation
    return _head_heatmap(
        a.heads.mean(0),
        f"Ablating each head ({a.kind}): change in the metric, mean over prompts (blue = it helped)",
        "Δ metric",
        "Δ metric",
    )


def ablation_mlps(run: LabRun, prompt: int = 0) -> Figure:
    return _layer_bars(run.ablation.mlps.mean(0), f"Ablating each MLP ({run.ablation.kind})", "Δ metric")


def patching_heads(run: LabRun, prompt: int = 0) -> Figure:
    return _head_heatmap(
        run.patching.mean_heads(),
        "Patching each head's output (clean → corrupted; 1 = clean), gap-weighted over prompts",
        "restored",
        "restored",
    )


def patching_mlps(run: LabRun, prompt: int = 0) -> Figure:
    return _layer_bars(run.patching.mean_mlps(), "Patching each MLP's output (1 = clean)", "restored")


def steering_sweep(run: LabRun, prompt: int = 0, index: int = 0) -> Figure:
    """The answer's probability (and the unit's activation, when read) against the coefficient."""
    s = run.steering[index]
    traces: list[dict[str, Any]] = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "x": list(s.sweep.coefficients),
            "y": s.sweep.answer_prob.tolist(),
            "name": "P(answer)",
            "line": {"color": "#f07814"},
            "hovertemplate": "coefficient %{x:g}<br>P(answer) %{y:.3f}<extra></extra>",
        }
    ]
    extra: dict[str, Any] = {}
    if s.sweep.unit_activation is not None:
        traces.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "x": list(s.sweep.coefficients),
                "y": s.sweep.unit_activation.tolist(),
                "yaxis": "y2",
                "name": "activation",
                "line": {"color": "#1e6ec8", "dash": "dot"},
                "hovertemplate": "coefficient %{x:g}<br>activation %{y:.3f}<extra></extra>",
            }
        )
        extra["yaxis2"] = {"title": {"text": "unit activation"}, "overlaying": "y", "side": "right"}
    answer = token_label(run.prompts[0].answer)
    return {
        "data": traces,
        "layout": _layout(
            260,
            title={
                "text": f"Steering with {escape(s.label)}: P({answer}) by coefficient",
                "font": {"size": 13},
            },
            xaxis={"title": {"text": "coefficient"}, "gridcolor": "#eee"},
            yaxis={"title": {"text": "P(answer)"}, "rangemode": "tozero", "gridcolor": "#eee"},
            showlegend=s.sweep.unit_activation is not None,
            **extra,
        ),
    }


FIGURES: dict[str, Callable[..., Figure]] = {
    f.__name__: f
    for f in (
        predictions,
        logit_lens,
        attribution_heads,
        attribution_mlps,
        attention,
        attention_back,
        ablation_heads,
        ablation_mlps,
        patching_resid,
        patching_heads,
        patching_mlps,
        steering_sweep,
    )
}


def figure(run: LabRun, name: str, prompt: int = 0, **options: Any) -> Figure:
    """``FIGURES[name]``; a ``KeyError`` naming the figures for an unknown name."""
    if name not in FIGURES:
        raise KeyError(f"no lab figure {name!r}: one of {', '.join(FIGURES)}")
    return FIGURES[name](run, prompt, **options)
