"""The overview's sparsest units: by ``freq_50`` (fraction above half the unit's own max), lowest first,
among units with enough tokens above half their max; heads left out."""

from __future__ import annotations

import pandas as pd
from app_helpers import find, texts
from dash import dcc

from neurodash.app.panels.sparsity import MIN_STRONG_TOKENS, sparsest, sparsest_panel

SEEN = {"L0.mlp": 10_000, "L0.sae": 10_000, "L0.attn": 10_000}


def units() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "source_id": ["L0.mlp", "L0.mlp", "L0.mlp", "L0.sae", "L0.sae", "L0.attn"],
            "layer": [0] * 6,
            "kind": ["neuron", "neuron", "neuron", "sae_feature", "sae_feature", "head"],
            "unit": [0, 1, 2, 0, 1, 0],
            "density": [0.5, 0.5, 0.5, 0.01, 0.0001, 1.0],
            "freq_10": [0.2, 0.05, 0.3, 0.01, 0.0001, 0.9],
            # 30 tokens, 10 tokens (too few), 3000 tokens, 25 tokens, 1 token (too few); a head: left out
            "freq_50": [0.003, 0.001, 0.3, 0.0025, 0.0001, 0.0001],
        }
    )


def test_sparsest_units_are_the_lowest_freq_50_with_enough_evidence():
    frame = sparsest(units(), SEEN, n=10)
    assert list(zip(frame["source_id"], frame["unit"], strict=True)) == [
        ("L0.sae", 0),
        ("L0.mlp", 0),
        ("L0.mlp", 2),
    ]
    assert (frame["freq_50"] * 10_000 >= MIN_STRONG_TOKENS).all()
    assert sparsest(units(), SEEN, n=1)["unit"].tolist() == [0]


def test_sparsest_panel_links_them_with_readable_fractions_or_is_absent():
    panel = sparsest_panel(units(), {"L0.mlp": "L0N", "L0.sae": "L0F"}, SEEN, n=10)
    links = [c.href for c in find(panel, lambda c: isinstance(c, dcc.Link))]
    assert links == ["/unit/L0.sae/0", "/unit/L0.mlp/0", "/unit/L0.mlp/2"]
    shown = texts(panel)
    assert {"fraction > 50% of max", "fraction > 10% of max", "density (fraction > 0)"} <= set(shown)
    assert "0.25%" in shown and "30.00%" in shown
    assert sparsest_panel(units().drop(columns="freq_50"), {}, SEEN) is None, "a store without freq_50"
