"""The standalone HTML report: one file with inline CSS, no script and no external URL; it opens offline.

Tokens are ``<span>``s coloured by activation (orange positive, blue negative, as in the dashboard,
with opacity |act| / the unit's largest |act|), the exact token and value in a ``title`` tooltip.
Every string from the store or the user (tokens, notes, names) is HTML-escaped, and a
Content-Security-Policy that allows inline styles only would block anything else.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from datetime import datetime, timezone
from itertools import groupby
from pathlib import Path

import pyarrow as pa

from neurodash.colors import NEGATIVE, POSITIVE, rgba, token_background, value_color
from neurodash.storage import Store
from neurodash.units import UnitRef

VISIBLE_WHITESPACE = str.maketrans({"\n": "↵\n", "\t": "→\t", "\r": "␍"})
CSP = "default-src 'none'; style-src 'unsafe-inline'"
CSS = """
body { margin: 0 auto; max-width: 1200px; padding: 16px 24px 48px; color: #1d2330; background: #fff;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; }
h1 { font-size: 22px; margin: 8px 0 4px; } h2 { font-size: 17px; margin: 28px 0 6px; }
.muted { color: #667085; font-size: 13px; font-weight: normal; }
.legend span { padding: 1px 6px; border-radius: 3px; margin-right: 4px; }
details { margin: 4px 0 10px; } summary { cursor: pointer; font-weight: 600; color: #344054; }
.count { color: #667085; font-weight: normal; margin-left: 6px; }
.ex { display: flex; gap: 12px; align-items: baseline; padding: 4px 0; border-bottom: 1px solid #eef0f3; }
.val { flex: 0 0 64px; text-align: right; font: 12.5px ui-monospace, Menlo, Consolas, monospace; }
.toks { flex: 1; white-space: pre-wrap; word-break: break-word;
  font: 12.5px/1.7 ui-monospace, SFMono-Regular, Menlo, Consolas, "DejaVu Sans Mono", monospace; }
.t { border-radius: 2px; } .m { outline: 1.5px solid #1d2330; }
.where { flex: 0 0 auto; color: #98a2b3; font-size: 11.5px; }
.note { color: #475467; font-size: 12.5px; font-style: italic; padding: 0 0 4px 76px; }
"""


def write_report(
    store: Store, tables: Iterable[pa.Table], path: Path, description: str, n_examples: int
) -> None:
    """Write the report of the example rows in ``tables`` (``neurodash.export`` rows, in store order)."""
    with path.open("w", encoding="utf-8") as f:
        f.write(_head(store, description, n_examples))
        for table in tables:
            for _, rows in groupby(table.to_pylist(), key=lambda r: r["unit"]):
                f.write(_unit_section(store, list(rows)))
        f.write("</body>\n</html>\n")


def _head(store: Store, description: str, n_examples: int) -> str:
    meta = store.meta
    facts = [
        f"model {meta.get('model', '?')}",
        f"dataset {meta.get('dataset', '?')}",
        f"{int(meta.get('n_tokens', 0)):,} tokens" if meta.get("n_tokens", "").isdigit() else "",
        f"store {store.path.name}",
    ]
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        f"<title>neurodash: {_esc(description)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        "<h1>neurodash examples</h1>\n"
        f'<p class="muted">{_esc(" · ".join(x for x in facts if x))}</p>\n'
        f'<p class="muted">{_esc(description)} · {n_examples:,} examples · {generated}</p>\n'
        f'<p class="legend muted">activation: <span style="background:{rgba(POSITIVE, 0.8)}">positive</span>'
        f'<span style="background:{rgba(NEGATIVE, 0.8)};color:#fff">negative</span> hover a token for its value</p>\n'
    )


def _unit_section(store: Store, rows: list[dict]) -> str:
    first = rows[0]
    stats = store.unit_stats(UnitRef(first["source_id"], first["unit_index"]))
    max_abs = max(stats.max_act, -stats.min_act, 1e-9)
    summary = f"layer {first['layer']} · max {stats.max_act:+.3f} · min {stats.min_act:+.3f} · density {stats.density:.4f}"
    parts = [
        f'<section class="unit" id="{_esc(first["unit"])}">\n'
        f'<h2>{_esc(first["unit"])} <span class="muted">{_esc(summary)}</span></h2>\n'
    ]
    for bucket, group in groupby(rows, key=lambda r: r["bucket"]):
        group = list(group)
        parts.append(
            f'<details open><summary>{_esc(bucket_title(bucket))}<span class="count">{len(group)}</span></summary>\n'
        )
        parts.extend(_example(r, max_abs) for r in group)
        parts.append("</details>\n")
    parts.append("</section>\n")
    return "".join(parts)


def _example(row: dict, max_abs: float) -> str:
    value, marked = row["value"], row["pos"] - row["start"]
    spans = "".join(
        _token(i == marked, tok, act, max_abs) for i, (tok, act) in enumerate(zip(row["tokens"], row["acts"]))
    )
    color = value_color(value)
    note = f'<div class="note">{_esc(row["note"])}</div>\n' if row.get("note") else ""
    return (
        f'<div class="ex"><span class="val" style="color:{color}">{value:+.3f}</span>'
        f'<span class="toks">{spans}</span>'
        f'<span class="where">{row["bucket"]} #{row["rank"]} · seq {row["seq_id"]} · pos {row["pos"]}</span></div>\n'
        f"{note}"
    )


def _token(marked: bool, token: str, act: float, max_abs: float) -> str:
    background = token_background(act, max_abs)
    style = f' style="background:{background}"' if background else ""
    title = _esc(f"{token!r} {act:+.4f}")
    return (
        f'<span class="{"t m" if marked else "t"}"{style} title="{title}">{_esc(token_display(token))}</span>'
    )


def bucket_title(bucket: str) -> str:
    if bucket == "top":
        return "Top activations"
    if bucket == "bottom":
        return "Bottom activations (most negative)"
    return f"Quantile group {bucket[1:]}"


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def token_display(token: str) -> str:
    """A token as the report shows it: newlines and tabs made visible (and kept), an empty token marked."""
    return token.translate(VISIBLE_WHITESPACE) if token else "∅"
