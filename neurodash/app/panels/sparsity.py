"""The overview's sparsest units: by the fraction of tokens above half the unit's own max (``freq_50``),
lowest first. ``density`` (the fraction > 0) is about 50% for a SiLU-gated neuron, so it finds nothing."""

from __future__ import annotations

import pandas as pd
from dash import html

from neurodash.app.render import tables, widgets
from neurodash.app.render.formats import fraction_text, metric_title
from neurodash.units import HEAD

RANKED_BY = "freq_50"
MIN_STRONG_TOKENS = 20  # evidence a unit needs: tokens above half its max (fewer: its max may be one outlier)


def sparsest(units: pd.DataFrame, tokens_seen: dict[str, int], n: int = 10) -> pd.DataFrame:
    """The ``n`` units (not heads: a head's norm does not fire) with the lowest ``freq_50`` among those
    with at least ``MIN_STRONG_TOKENS`` tokens above half their max (``tokens_seen`` per source)."""
    if RANKED_BY not in units:
        return units.iloc[:0]
    seen = units["source_id"].map(tokens_seen).fillna(0).to_numpy(float)
    strong_tokens = units[RANKED_BY].to_numpy(float) * seen
    kept = units.loc[(units["kind"] != HEAD).to_numpy() & (strong_tokens >= MIN_STRONG_TOKENS)]
    return kept.nsmallest(n, RANKED_BY)


def sparsest_panel(
    units: pd.DataFrame, prefixes: dict[str, str | None], tokens_seen: dict[str, int], n: int = 10
) -> html.Section | None:
    """The sparsest units on their own scale, linked; None for a store without ``freq_50``."""
    frame = sparsest(units, tokens_seen, n)
    if frame.empty:
        return None
    shown = {m: metric_title(m) for m in ("freq_50", "freq_10", "density") if m in frame}
    table = tables.units_table(frame, prefixes, shown, lambda value: fraction_text(float(value)))
    return widgets.panel(
        "Sparsest units (on their own scale)",
        html.P(
            f"Lowest fraction of tokens above half the unit's own max first, among units with at least "
            f"{MIN_STRONG_TOKENS} such tokens (fewer is too little evidence: the max may be one outlier). "
            "Density (the fraction > 0) is beside it: for SiLU-gated neurons it is about 50% for all.",
            className="nd-muted",
        ),
        table,
    )
