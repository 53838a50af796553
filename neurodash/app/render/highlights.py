"""Tokens coloured by activation or attention: token rows, examples and their sections, attention
arcs. Tokens travel as JSON in ``data-*`` attributes; ``assets/neurodash.js`` builds them, as text."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
from dash import html
from dash.development.base_component import Component

from neurodash.app import ids
from neurodash.colors import ATTENTION, SCALE, rgba, value_color
from neurodash.units import AttentionRow, Example

C = TypeVar("C", bound=Component)


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
    return _example_div(
        example,
        html.Span(
            f"{value:+.3f}",
            className="nd-value",
            style={"color": value_color(value)},
            title=f"sequence {example.seq_id}, token {example.pos}",
        ),
        example_tokens(example, max_abs),
        add_button,
    )


def _example_div(example: Example, value: html.Span, tokens: Component, add_button: bool) -> html.Div:
    """An example's row: the "+" button (with ``add_button``), its value, its tokens."""
    return html.Div(
        [*([add_example_button(example)] if add_button else []), value, tokens], className="nd-example"
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
    examples: Sequence[Example],
    max_abs: float = 1.0,
    add_buttons: bool = False,
    row: Callable[[Example], html.Div] | None = None,
    title: Callable[[str], str] = bucket_title,
    opened: Callable[[str, int], bool] = lambda bucket, n_groups: (
        bucket in ("top", "bottom") or n_groups <= 2
    ),
) -> list[html.Details]:
    """One collapsible section per bucket, in the given (store) order: top, quantiles, bottom. Each
    example is drawn by ``row`` (default ``example_row`` with ``max_abs``), each section titled by
    ``title(bucket)`` and open where ``opened(bucket, number of sections)``."""
    draw = row or (lambda e: example_row(e, max_abs, add_buttons))
    groups: dict[str, list[Example]] = {}
    for e in examples:
        groups.setdefault(e.bucket, []).append(e)
    return [
        html.Details(
            [
                html.Summary([title(bucket), html.Span(f"{len(group)}", className="nd-count")]),
                html.Div([draw(e) for e in group], className="nd-examples"),
            ],
            open=opened(bucket, len(groups)),
            className="nd-section",
        )
        for bucket, group in groups.items()
    ]


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
    return _example_div(
        example,
        html.Span(
            f"{value:.3f}",
            className="nd-value",
            style={"color": rgba(ATTENTION)},
            title=f"output norm at the query; sequence {example.seq_id}, token {example.pos}{before}",
        ),
        tokens,
        add_button,
    )


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
