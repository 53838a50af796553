"""The colour scale of activations, defined once: orange for positive, blue for negative, a token's
background as opaque as its activation is strong (|act| / the unit's largest |act|).

The dashboard's figures and values, and the HTML report, colour with these functions; the dashboard's
token rows are drawn in the browser (``app/assets/neurodash.js``), which reads ``SCALE`` from the page.
Every Plotly figure (the dashboard's, the circuit lab's) starts from ``figure_layout``.
"""

from __future__ import annotations

RGB = tuple[int, int, int]

POSITIVE: RGB = (240, 120, 20)  # orange
NEGATIVE: RGB = (30, 110, 200)  # blue
ATTENTION: RGB = (120, 70, 190)  # violet: attention weights (never negative), apart from activations
MIN_ALPHA = 0.005  # a token fainter than this is left uncoloured

# What neurodash.js colours token rows with (see ``token_background``): written into the page as JSON.
SCALE = {
    "positive": ",".join(map(str, POSITIVE)),
    "negative": ",".join(map(str, NEGATIVE)),
    "attention": ",".join(map(str, ATTENTION)),
    "min_alpha": MIN_ALPHA,
}


def rgba(color: RGB, alpha: float = 1.0) -> str:
    return f"rgba({color[0]},{color[1]},{color[2]},{alpha:.2f})"


def value_color(value: float) -> str:
    """The colour of a value written out (an example's activation): its sign's, opaque."""
    return rgba(POSITIVE if value >= 0 else NEGATIVE)


def token_background(act: float, max_abs: float) -> str | None:
    """A token's background for activation ``act`` on a unit whose largest |activation| is ``max_abs``;
    None where it is too faint to show."""
    alpha = min(abs(act) / max_abs, 1.0) if max_abs > 0 else 0.0
    return rgba(POSITIVE if act > 0 else NEGATIVE, alpha) if alpha >= MIN_ALPHA else None


FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"


def figure_layout(**extra) -> dict:
    """The layout every figure starts from (font, margins, no background, no legend), with ``extra``."""
    base = {
        "margin": {"l": 50, "r": 10, "t": 30, "b": 40},
        "font": {"family": FONT, "size": 12},
        "paper_bgcolor": "rgba(0,0,0,0)",
        "plot_bgcolor": "rgba(0,0,0,0)",
        "showlegend": False,
        "hoverlabel": {"font": {"family": FONT}},
    }
    return base | extra
