"""The pieces pages are built of: panels, stat cards, links to units and lists of them with bars, the
unit page's header, download buttons, feedback and the not-found page."""

from __future__ import annotations

from collections.abc import Sequence

from dash import dcc, html

from neurodash.app import ids, routes
from neurodash.app.render.formats import FRACTION_METRICS, fraction_text, metric_title
from neurodash.units import Link, Source, UnitRef, UnitStats


def stat_cards(items: Sequence[tuple[str, str]]) -> html.Div:
    return html.Div(
        [
            html.Div(
                [html.Div(label, className="nd-stat-label"), html.Div(value, className="nd-stat-value")],
                className="nd-stat",
            )
            for label, value in items
        ],
        className="nd-stats",
    )


def unit_stat_cards(stats: UnitStats, scores: dict[str, float]) -> html.Div:
    items = [
        ("max", f"{stats.max_act:+.3f}"),
        ("min", f"{stats.min_act:+.3f}"),
        ("mean", f"{stats.mean_act:+.4f}"),
        ("std", f"{stats.std_act:.3f}"),
        ("skew", f"{stats.skew:.2f}"),
        ("kurtosis", f"{stats.kurtosis:.1f}"),
        ("density", fraction_text(stats.density)),
        ("tokens", f"{stats.n_tokens:,}"),
    ]
    items += [
        (metric_title(m), fraction_text(v) if m in FRACTION_METRICS else f"{v:.3f}")
        for m, v in scores.items()
    ]
    return stat_cards(items)


def unit_link(label: str, ref: UnitRef, **props) -> dcc.Link:
    return dcc.Link(label, href=routes.unit_href(ref), **props)


def neighbor_list(neighbors: Sequence[tuple[UnitRef, float]], labels: Sequence[str]) -> html.Div | html.P:
    """The nearest units by cosine similarity of output directions, each a link with a bar."""
    rows = [
        (label, ref, max(cos, 0), f"{cos:.3f}", None)
        for (ref, cos), label in zip(neighbors, labels, strict=True)
    ]
    return bar_list(rows, "No neighbours stored for this unit.")


def link_list(links: Sequence[Link], labels: Sequence[str]) -> html.Div | html.P:
    """Units of another source tied to this one through an SAE decoder: share of mass, decoder weight."""
    top = max((link.share for link in links), default=0) or 1
    rows = [
        (label, link.ref, link.share / top, f"{link.share:.1%}", f"decoder weight {link.weight:+.3f}")
        for link, label in zip(links, labels, strict=True)
    ]
    return bar_list(rows, "None stored.")


def bar_list(rows: Sequence[tuple[str, UnitRef, float, str, str | None]], empty: str) -> html.Div | html.P:
    """Linked units, each with a bar (fraction 0..1), its value as text and an optional tooltip."""
    if not rows:
        return html.P(empty, className="nd-muted")
    return html.Div(
        [
            html.Div(
                [
                    unit_link(label, ref, className="nd-neighbor-link"),
                    html.Div(
                        html.Div(className="nd-bar-fill", style={"width": f"{min(fraction, 1) * 100:.0f}%"}),
                        className="nd-bar",
                    ),
                    html.Span(value, className="nd-num"),
                ],
                className="nd-neighbor",
                title=tip,
            )
            for label, ref, fraction, value, tip in rows
        ],
        className="nd-neighbors",
    )


def dead_note(stats: UnitStats) -> html.P | None:
    """A unit that never fired on the corpus: said plainly above its (empty) examples."""
    if stats.density > 0:
        return None
    return html.P(
        f"Dead: this unit never fired (> 0) on the {stats.n_tokens:,} tokens seen.", className="nd-dead-note"
    )


def unit_header(
    label: str, source: Source, prev: tuple[str, UnitRef] | None, nxt: tuple[str, UnitRef] | None, url: str
) -> html.Div:
    """Title, source, previous / next links (keyboard: k / j), and the copyable permalink."""

    def step(arrow: str, target: tuple[str, UnitRef] | None, link_id: str, key: str) -> html.Span | dcc.Link:
        if target is None:
            return html.Span(arrow, className="nd-step nd-step-off", id=link_id)
        return dcc.Link(
            f"{arrow} {target[0]}" if arrow == "←" else f"{target[0]} {arrow}",
            href=routes.unit_href(target[1]),
            id=link_id,
            className="nd-step",
            title=f"{target[0]} ({key})",
        )

    return html.Div(
        [
            html.Div(
                [
                    html.H1(label, className="nd-title"),
                    html.Span(f"{source.kind.replace('_', ' ')} · {source.hook}", className="nd-subtitle"),
                ],
                className="nd-title-block",
            ),
            html.Div(
                [step("←", prev, ids.UNIT_PREV, "k"), step("→", nxt, ids.UNIT_NEXT, "j")],
                className="nd-steps",
            ),
            html.Div(
                [
                    html.Code(url, id=ids.PERMALINK, className="nd-permalink"),
                    dcc.Clipboard(
                        target_id=ids.PERMALINK,
                        id=ids.PERMALINK_COPY,
                        title="copy the permalink",
                        className="nd-copy",
                    ),
                ],
                className="nd-permalink-box",
            ),
        ],
        className="nd-unit-header",
    )


def download_buttons(
    formats: tuple[str, ...], button_type: str = ids.DOWNLOAD_FORMAT, download_id: str = ids.DOWNLOAD
) -> html.Div:
    """One button per export format, and the download they trigger."""
    buttons = [
        html.Button(fmt.upper(), id={"type": button_type, "fmt": fmt}, className="nd-button nd-step")
        for fmt in formats
    ]
    return html.Div(
        [html.Span("Download examples", className="nd-muted"), *buttons, dcc.Download(id=download_id)],
        className="nd-downloads",
    )


def feedback(message: str, ok: bool) -> html.Span:
    """What came of an action, as text (it may quote a user's input): green if ``ok``, else red."""
    return html.Span(message, className="nd-ok" if ok else "nd-error")


def panel(title: str, *children, class_name: str = "") -> html.Section:
    return html.Section(
        [html.H2(title, className="nd-panel-title"), *children], className=f"nd-panel {class_name}".strip()
    )


def not_found(message: str, hint: str = "") -> html.Div:
    return html.Div(
        [
            html.H1("Not found", className="nd-title"),
            html.P(message, className="nd-notfound-message"),
            html.P(hint, className="nd-muted") if hint else None,
            html.P(
                [
                    dcc.Link("Overview", href=routes.OVERVIEW),
                    " · ",
                    dcc.Link("Text probe", href=routes.PROBE),
                    " · or type a unit such as L3N42 in the box above.",
                ]
            ),
        ],
        className="nd-notfound",
    )
