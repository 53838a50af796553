"""The unit page's related units: its nearest units (cosine of output or decoder directions) and the
bridge between neurons and SAE features (one panel per SAE, or layer, the unit is tied to)."""

from __future__ import annotations

from dash import html

from neurodash.app.data import unit_label
from neurodash.app.render import widgets
from neurodash.storage import Store
from neurodash.units import SAE_FEATURE, Link, UnitRef


def layout(store: Store, ref: UnitRef, prefixes: dict[str, str | None]) -> html.Div:
    """The nearest units' panel, then the links' panels, stacked."""
    neighbors = store.neighbors(ref)
    directions = "decoder" if store.source(ref.source_id).kind == SAE_FEATURE else "output"
    return html.Div(
        [
            widgets.panel(
                f"Nearest units (cosine of {directions} directions)",
                widgets.neighbor_list(neighbors, [unit_label(r, prefixes) for r, _ in neighbors]),
            ),
            *links_panels(store, ref, prefixes),
        ],
        className="nd-stack",
    )


def links_panels(store: Store, ref: UnitRef, prefixes: dict[str, str | None]) -> list[html.Section]:
    """One panel per SAE (or layer) this unit is tied to."""
    by_source: dict[str, list[Link]] = {}
    for link in store.links(ref):
        by_source.setdefault(link.ref.source_id, []).append(link)
    feature_page = store.source(ref.source_id).kind == SAE_FEATURE
    return [
        widgets.panel(
            f"Neurons of {target} this feature writes to (share of its decoder row)"
            if feature_page
            else f"Features of {target} behind this neuron (share of its activation mass)",
            widgets.link_list(links, [unit_label(link.ref, prefixes) for link in links]),
        )
        for target, links in by_source.items()
    ]
