"""``neurodash embed`` and ``neurodash search``: search by meaning from the command line.

neurodash embed STORE [--sources L15.sae,L15.mlp]
neurodash search STORE "closing brackets" [--limit 20] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from neurodash.meaning import EmbedReport

LIMIT = 20  # as neurodash.meaning.LIMIT (not imported here: the parser loads no storage)


def add_embed_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", type=Path)
    p.add_argument("--sources", action="append", default=[], help="only these sources (comma-separated)")
    p.add_argument(
        "--file", type=Path, help="the explanations file (default: STORE.explanations.duckdb beside it)"
    )


def add_search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", type=Path)
    p.add_argument("query", help='what to look for, in words: "closing brackets"')
    p.add_argument("--limit", type=int, default=LIMIT, help=f"how many units (default {LIMIT})")
    p.add_argument(
        "--file", type=Path, help="the explanations file (default: STORE.explanations.duckdb beside it)"
    )
    p.add_argument("--json", action="store_true", help="print the units as JSON (a list, best first)")


def cmd_embed(args: argparse.Namespace) -> None:
    from neurodash.export import split_list

    report = embed_with_progress(args.store, split_list(args.sources) or None, args.file)
    print(
        f"wrote {report.path}: {report.embedded:,} texts embedded, {report.unchanged:,} unchanged "
        f"({report.seconds:.0f} s)"
    )


def embed_with_progress(store: Path, sources: Sequence[str] | None, file: Path | None = None) -> EmbedReport:
    """``embed_store`` with a progress bar on stderr."""
    from tqdm.auto import tqdm

    from neurodash.meaning import embed_store

    bar = tqdm(total=0, desc="embedding", unit="text", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        return embed_store(store, sources, file, progress)
    finally:
        bar.close()


def cmd_search(args: argparse.Namespace) -> None:
    from neurodash.errors import NeurodashError
    from neurodash.meaning import search_by_meaning

    if args.limit < 1:
        raise NeurodashError(f"--limit must be at least 1, not {args.limit}")
    hits = search_by_meaning(args.store, args.query, args.limit, args.file)
    if args.json:
        print(json.dumps([_hit_json(h) for h in hits], indent=1))
        return
    print(f"{'similarity':>10}  {'unit':16}  {'score':>5}  explanation, or what it fires on")
    for h in hits:
        score = "" if h.correlation is None else f"{h.correlation:5.2f}"
        text = h.explanation or h.text
        print(f"{h.similarity:10.3f}  {str(h.ref):16}  {score:>5}  {_shorten(text, 90)}")


def _hit_json(h) -> dict:
    return {
        "unit": str(h.ref),
        "source_id": h.ref.source_id,
        "index": h.ref.unit,
        "similarity": round(h.similarity, 6),
        "matched": h.text_kind,
        "text": h.text,
        "explanation": h.explanation,
        "correlation": h.correlation,
    }


def _shorten(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
