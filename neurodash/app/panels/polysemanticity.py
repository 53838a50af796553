"""Polysemanticity on the dashboard: a unit's scores with their breakdown (the context clusters and
max tokens its examples fall into, one example of each), and the most / least polysemantic units.

Data in, components out; ``features_behind`` gathers from the store what the unit panel shows of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from dash import html

from neurodash.app.data import unit_label
from neurodash.app.render import highlights, tables, widgets
from neurodash.storage import Store
from neurodash.units import SAE_FEATURE, Example, Link, UnitRef

COMBINED = "polysemanticity"
METRICS = {  # name: (label, what it means)
    COMBINED: (
        "polysemanticity",
        "Geometric mean of the context clusters and max tokens scores: about 1 when both agree it does one "
        "thing. A heuristic average; the SAE features score is shown beside it, not folded in.",
    ),
    "context_diversity": (
        "context clusters",
        "exp(entropy) of how the top and quantile examples split into clusters of similar contexts "
        "(cosine >= 0.5 between the MLP inputs at their tokens): the effective number of contexts.",
    ),
    "token_diversity": (
        "max tokens",
        "exp(entropy) of the tokens the top and quantile examples peak on: the effective number of tokens.",
    ),
    "sae_features": (
        "SAE features",
        "exp(entropy) of the SAE features' shares of this neuron's activation mass (each token's activation "
        "split among the features active there by what each writes to the neuron): the effective number "
        "of SAE latents behind it.",
    ),
    "sae_features_80": (
        "SAE features (80%)",
        "How many SAE features cover 80% of this neuron's activation mass.",
    ),
    "bimodality": (
        "bimodality",
        "(skew² + 1) / kurtosis of the activations: 5/9 for a uniform distribution, towards 1 for a rare, "
        "sparse unit (a mass at zero and a tail). High values go with monosemantic units in the toy model.",
    ),
}


@dataclass(frozen=True)
class Group:
    """Examples that share a cluster or a max token: how many, and the strongest one."""

    label: str
    count: int
    example: Example


def breakdown(
    examples: Sequence[Example], clusters: dict[tuple[int, int], int]
) -> tuple[list[Group], list[Group]]:
    """The unit's top and quantile examples grouped by context cluster and by max token, largest first.

    Each group's example is its strongest (for a cluster: its leader)."""
    kept = sorted((e for e in examples if e.bucket != "bottom"), key=lambda e: -e.value)
    by_cluster: dict[int, list[Example]] = {}
    by_token: dict[str, list[Example]] = {}
    for e in kept:
        if (e.seq_id, e.pos) in clusters:
            by_cluster.setdefault(clusters[(e.seq_id, e.pos)], []).append(e)
        by_token.setdefault(e.max_token, []).append(e)

    def groups(members: dict, label) -> list[Group]:
        ordered = sorted(members.items(), key=lambda kv: (-len(kv[1]), -kv[1][0].value))
        return [Group(label(key, i), len(es), es[0]) for i, (key, es) in enumerate(ordered)]

    return (
        groups(by_cluster, lambda _key, i: f"context {i + 1}"),
        groups(by_token, lambda token, _i: repr(token)),
    )


def score_cards(scores: dict[str, float]) -> html.Div:
    items = [
        html.Div(
            [
                html.Div(label, className="nd-stat-label"),
                html.Div(f"{scores[m]:.2f}", className="nd-stat-value"),
            ],
            className="nd-stat",
            title=meaning,
        )
        for m, (label, meaning) in METRICS.items()
        if m in scores and math.isfinite(scores[m])
    ]
    return html.Div(items, className="nd-stats")


def group_list(
    title: str, groups: Sequence[Group], max_abs: float, shown: int = 6, open_: bool = True
) -> html.Details:
    total = sum(g.count for g in groups)
    rows: list[html.Div | html.P] = [
        _example_item(
            [
                html.Span(g.label, className="nd-strong"),
                f" · {g.count} of {total} examples ({g.count / total:.0%}) · strongest peaks at "
                f"{g.example.value:+.3f} on {g.example.max_token!r}",
            ],
            g.example,
            max_abs,
            title=f"sequence {g.example.seq_id}, token {g.example.pos}",
        )
        for g in groups[:shown]
    ]
    more = len(groups) - shown
    if more > 0:
        rows.append(html.P(f"… and {more} smaller groups", className="nd-muted"))
    return _section(title, len(groups), rows, open_)


@dataclass(frozen=True)
class FeatureBehind:
    """An SAE feature behind a neuron: its link (share of the neuron's mass), name and strongest example."""

    link: Link
    label: str
    example: Example


def features_behind(
    store: Store, ref: UnitRef, prefixes: dict[str, str | None], n: int = 6, strong: bool = False
) -> list[FeatureBehind]:
    """A neuron's SAE features with the largest shares of its mass, each with its strongest example;
    ``strong``: of its strong firing (each token weighted by the neuron's activation; empty for a store
    from before it)."""
    if store.source(ref.source_id).kind == SAE_FEATURE:
        return []
    links = sorted(store.links(ref, strong=strong), key=lambda link: -link.share)[:n]
    strongest = store.strongest_examples([link.ref for link in links])
    return [
        FeatureBehind(link, unit_label(link.ref, prefixes), strongest[link.ref])
        for link in links
        if link.ref in strongest
    ]


def feature_list(
    features: Sequence[FeatureBehind], strong: Sequence[FeatureBehind] = (), shown: int = 6
) -> html.Details:
    """The SAE features that share the neuron's activation mass, largest share first, each linked
    and with its own strongest example (coloured by the feature); beside them, where the store has
    them, the features behind its strong firing (activation-weighted)."""
    whole = _feature_rows(features[:shown], "of this neuron's activation mass")
    title = "SAE features behind it (each feature's strongest example)"
    if not strong:
        return _section(title, len(features), whole, False)
    columns = [
        html.Div([html.H4("whole mass", className="nd-muted"), *whole], className="nd-bridge-whole"),
        html.Div(
            [
                html.H4("when it fires strongly (activation-weighted)", className="nd-muted"),
                *_feature_rows(strong[:shown], "of its strong firing"),
            ],
            className="nd-bridge-strong",
        ),
    ]
    return _section(title, len(features), [html.Div(columns, className="nd-grid-2 nd-bridge")], False)


def _feature_rows(features: Sequence[FeatureBehind], share_of: str) -> list[html.Div]:
    return [
        _example_item(
            [
                widgets.unit_link(f.label, f.link.ref, className="nd-strong"),
                f" · {f.link.share:.1%} {share_of} · its strongest example, "
                f"{f.example.value:+.3f} on {f.example.max_token!r}",
            ],
            f.example,
            max(abs(f.example.value), 1e-9),
        )
        for f in features
    ]


def _example_item(header: list, example: Example, max_abs: float, title: str | None = None) -> html.Div:
    """One group of a breakdown: a line about it, then its example."""
    return html.Div(
        [
            html.Div(header, className="nd-muted", title=title),
            highlights.example_tokens(example, max_abs),
        ],
        className="nd-poly-group",
        style={"padding": "6px 0 8px", "borderBottom": "1px solid #f0f1f4"},
    )


def _section(title: str, count: int, rows: list, open_: bool) -> html.Details:
    return html.Details(
        [
            html.Summary([title, html.Span(f"{count}", className="nd-count")]),
            html.Div(rows, className="nd-examples"),
        ],
        open=open_,
        className="nd-section",
    )


def unit_panel(
    scores: dict[str, float],
    examples: Sequence[Example],
    clusters: dict[tuple[int, int], int],
    max_abs: float,
    features: Sequence[FeatureBehind] = (),
    strong_features: Sequence[FeatureBehind] = (),
) -> html.Section | None:
    """The unit's polysemanticity scores (hover a card for its meaning) and what makes them: the
    context clusters and the max tokens of its examples, and the SAE features behind a neuron (its
    whole mass, and its strong firing beside it), one example of each. None without scores."""
    if not any(m in scores for m in METRICS):
        return None
    by_context, by_token = breakdown(examples, clusters)
    parts: list[html.Div | html.Details] = [score_cards(scores)]
    if by_context:
        parts.append(
            group_list(
                "Contexts its examples fall into (each cluster's strongest example)", by_context, max_abs
            )
        )
    if by_token:
        parts.append(group_list("Tokens its examples peak on", by_token, max_abs, open_=False))
    if features:
        parts.append(feature_list(features, strong_features))
    return widgets.panel("Polysemanticity", *parts)


MIN_FIRING_TOKENS = 20  # evidence a unit needs to be ranked: tokens it fired on (> 0) over the corpus


def with_evidence(
    units: pd.DataFrame, firing_tokens: np.ndarray, metric: str, min_firing: int = MIN_FIRING_TOKENS
) -> pd.DataFrame:
    """The units scored by ``metric`` that fired on at least ``min_firing`` tokens (``firing_tokens``, per
    row of ``units``): a feature that fired on one token scores 1 by having nothing to vary, which
    says nothing about what it means."""
    return units.loc[units[metric].notna().to_numpy() & (firing_tokens >= min_firing)]


def ranked(
    units: pd.DataFrame, firing_tokens: np.ndarray, metric: str = COMBINED, n: int = 10
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``n`` units with the highest and the lowest ``metric``, among units with enough evidence
    (``with_evidence``; units without the metric, NaN, left out)."""
    if metric not in units:
        empty = units.iloc[:0]
        return empty, empty
    scored = with_evidence(units, firing_tokens, metric)
    return scored.nlargest(n, metric), scored.nsmallest(n, metric)


def ranking_panel(
    units: pd.DataFrame, prefixes: dict[str, str | None], firing_tokens: np.ndarray, n: int = 10
) -> html.Section | None:
    """Most and least polysemantic units of the store (by the combined score), linked."""
    most, least = ranked(units, firing_tokens, COMBINED, n)
    if most.empty:
        return None
    shown = (COMBINED, "context_diversity", "token_diversity", "sae_features")
    columns = {m: METRICS[m][0] for m in shown if m in units}
    n_ranked = len(with_evidence(units, firing_tokens, COMBINED))
    return widgets.panel(
        "Most and least polysemantic",
        html.P(
            f"By the combined score, over the {n_ranked:,} scored units that fired on at least "
            f"{MIN_FIRING_TOKENS} tokens (sort the table below by any score for more).",
            className="nd-muted",
        ),
        html.Div(
            [
                html.Div(
                    [
                        html.H3(title, className="nd-panel-title"),
                        tables.units_table(frame, prefixes, columns, _fmt),
                    ]
                )
                for title, frame in (("Most", most), ("Least", least))
            ],
            className="nd-grid-2",
        ),
    )


def _fmt(value: float) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.2f}"
