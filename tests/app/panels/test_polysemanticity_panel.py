"""The polysemanticity panels: the breakdown of a unit's examples, and the most / least lists."""

from __future__ import annotations

import numpy as np
import pandas as pd
from app_helpers import find, texts, token_rows
from dash import dcc

from neurodash.app.panels.polysemanticity import breakdown, ranked, ranking_panel, unit_panel
from neurodash.units import Example, UnitRef

REF = UnitRef("L0.mlp", 3)


def example(bucket: str, rank: int, seq: int, value: float, token: str) -> Example:
    tokens = ("a", token, "b")
    return Example(REF, bucket, rank, seq, 11, 10, tokens, (1, 2, 3), (0.0, value, 0.1))


EXAMPLES = [
    example("top", 0, 1, 5.0, "def"),
    example("top", 1, 2, 4.0, "class"),
    example("top", 2, 3, 3.0, "def"),
    example("q0.40", 0, 4, 1.0, "def"),
    example("bottom", 0, 5, -2.0, "<script>"),
]
CLUSTERS = {(1, 11): 0, (2, 11): 1, (3, 11): 0, (4, 11): 0}


def test_breakdown_groups_by_cluster_and_token_largest_first():
    contexts, tokens = breakdown(EXAMPLES, CLUSTERS)
    assert [(g.label, g.count, g.example.seq_id) for g in contexts] == [
        ("context 1", 3, 1),
        ("context 2", 1, 2),
    ]
    assert [(g.label, g.count, g.example.seq_id) for g in tokens] == [("'def'", 3, 1), ("'class'", 1, 2)]


def test_unit_panel_shows_scores_and_groups_or_nothing_without_scores():
    scores = {"polysemanticity": 1.4, "context_diversity": 1.7, "token_diversity": 1.75, "bimodality": 0.9}
    panel = unit_panel(scores, EXAMPLES, CLUSTERS, 5.0)
    shown = texts(panel)
    assert {"polysemanticity", "context clusters", "max tokens", "1.70", "context 1", "'def'"} <= set(shown)
    rows = token_rows(panel)  # one example per context and per token, its peak marked
    assert [row["tokens"][row["marked"]] for row in rows] == ["def", "class", "def", "class"]
    assert all("<script>" not in row["tokens"] for row in rows), (
        "bottom examples are no part of the breakdown"
    )
    assert unit_panel({}, EXAMPLES, CLUSTERS, 5.0) is None


def test_ranking_lists_link_the_extremes_and_skip_unscored_units():
    units = pd.DataFrame(
        {
            "source_id": ["L0.mlp"] * 4,
            "layer": [0] * 4,
            "kind": ["neuron"] * 4,
            "unit": [0, 1, 2, 3],
            "polysemanticity": [3.0, None, 1.0, 2.0],
        }
    )
    seen = np.full(4, 500.0)  # tokens each unit fired on
    most, least = ranked(units, seen, n=2)
    assert most["unit"].tolist() == [0, 3] and least["unit"].tolist() == [2, 3]
    panel = ranking_panel(units, {"L0.mlp": "L0N"}, seen, n=2)
    links = [c.href for c in find(panel, lambda c: isinstance(c, dcc.Link))]
    assert links == ["/unit/L0.mlp/0", "/unit/L0.mlp/3", "/unit/L0.mlp/2", "/unit/L0.mlp/3"]
    assert ranking_panel(units.drop(columns="polysemanticity"), {}, seen) is None


def test_units_with_too_little_evidence_are_not_ranked():
    """A feature that fired on one token scores 1 (nothing to vary): it is not "least polysemantic"."""
    units = pd.DataFrame(
        {
            "source_id": ["L0.sae"] * 3,
            "layer": [0] * 3,
            "kind": ["sae_feature"] * 3,
            "unit": [0, 1, 2],
            "polysemanticity": [1.0, 1.5, 4.0],
        }
    )
    most, least = ranked(units, np.array([1.0, 655.0, 13107.0]), n=3)
    assert least["unit"].tolist() == [1, 2] and 0 not in most["unit"].tolist()
