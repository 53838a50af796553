"""How metrics and fractions of tokens read, in figures, cards and tables."""

from __future__ import annotations

import math

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
