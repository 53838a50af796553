"""``neurodash explain``: scored explanations of a store's units, written beside it.

    neurodash explain STORE [--units L15N3,L15F7] [--layers 15] [--redo] [--model-steps]
        [--explainer URL --explainer-model NAME [--timeout 60]] [--out FILE]
        [--heldout-tokens 8192 | --no-fresh]

The offline pattern explainer by default; with ``--explainer``, an OpenAI-compatible endpoint (its
key from ``$NEURODASH_LLM_API_KEY`` or ``$OPENAI_API_KEY``). Every input is checked before anything
runs: bad input prints one line and exits with status 2. Finished units are kept when the run is
interrupted or the endpoint fails, and a second run goes on from there.

Explanations are scored on fresh held-out text: ``--heldout-tokens`` corpus tokens after the store's,
run through its model into ``STORE.heldout.duckdb`` beside it (built once, used again while it
matches; ``neurodash.heldout``). ``--no-fresh`` scores on the held-out windows of the store's own
examples instead, for a store whose model or corpus is not at hand.

With ``--model-steps``, the pattern explainer adds N2G's model steps (``precompute.n2g``: truncation
and replacement on the store's model and SAEs, explainer ``pattern+n2g``); a model or SAE that
cannot load is one line, exit status 2. They are asked for, not the default: on CPU they cost
seconds a unit where the store alone costs milliseconds (README, "Explanations").
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from neurodash.errors import NeurodashError
from neurodash.heldout import DEFAULT_TOKENS

if TYPE_CHECKING:
    from neurodash.explain_run import Explainer, Progress
    from neurodash.llm_explain import LLMExplainer


def add_explain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--units", action="append", default=[], help="units: L15N3, L15F7, L15.mlp/3 (comma-separated)"
    )
    p.add_argument(
        "--layers", help="every neuron and SAE feature of these layers, e.g. 15 or 0-3 (default all)"
    )
    p.add_argument(
        "--explainer", metavar="URL", help="an OpenAI-compatible endpoint, e.g. http://localhost:8000/v1"
    )
    p.add_argument("--explainer-model", metavar="NAME", help="the model the endpoint serves")
    p.add_argument("--timeout", default="60", help="seconds to wait for the endpoint's answer (default 60)")
    p.add_argument(
        "--model-steps",
        action="store_true",
        help="add N2G's truncation and replacement on the store's model (slow: seconds a unit on CPU)",
    )
    p.add_argument("--redo", action="store_true", help="explain units the explainer has explained before")
    p.add_argument(
        "--out", type=Path, help="the explanations file (default: STORE.explanations.duckdb beside it)"
    )
    p.add_argument(
        "--heldout-tokens",
        type=int,
        default=DEFAULT_TOKENS,
        metavar="N",
        help="score on N fresh corpus tokens after the store's, run through its model into "
        f"STORE.heldout.duckdb (default {DEFAULT_TOKENS})",
    )
    p.add_argument(
        "--no-fresh",
        action="store_true",
        help="score on the store's own held-out windows (no model run: for a store whose model cannot load)",
    )


def cmd_explain(args: argparse.Namespace) -> None:
    from neurodash.explain_run import explain_store
    from neurodash.export import split_list
    from neurodash.units import parse_layers

    explainer: Explainer | None = _explainer(args)
    layers = parse_layers(args.layers) if args.layers else ()
    if args.model_steps:
        from precompute.n2g import load_n2g

        explainer = load_n2g(args.store)
    with progress_bar() as progress:
        summary = explain_store(
            args.store,
            split_list(args.units),
            layers,
            explainer,
            args.out,
            args.redo,
            progress=progress,
            fresh_tokens=None if args.no_fresh else args.heldout_tokens,
        )
    kept = f"{summary.done} units explained by {summary.explainer} in {summary.seconds:.1f} s"
    if summary.skipped:
        kept += f" ({summary.skipped} done before, kept; --redo does them again)"
    if summary.interrupted:
        print(f"interrupted: kept {kept} in {summary.path}", file=sys.stderr)
        raise SystemExit(130)
    print(f"wrote {summary.path}: {kept}")


@contextmanager
def progress_bar() -> Iterator[Progress]:
    """A tqdm bar on stderr for ``explain_store``'s progress; it starts once the input is checked
    and the units counted, so that bad input is one line."""
    from tqdm.auto import tqdm

    bars = []

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="unit", desc="explain", file=sys.stderr))
        bars[0].update(done - bars[0].n)

    try:
        yield progress
    finally:
        for bar in bars:
            bar.close()


def _explainer(args: argparse.Namespace) -> LLMExplainer | None:
    if args.explainer and args.model_steps:
        raise NeurodashError("--model-steps is for the pattern explainer, not --explainer")
    if not args.explainer:
        if args.explainer_model:
            raise NeurodashError("--explainer-model needs --explainer URL")
        return None
    from neurodash.llm_explain import LLMExplainer

    if not args.explainer_model:
        raise NeurodashError("--explainer needs --explainer-model NAME (the model the endpoint serves)")
    try:
        timeout = float(args.timeout)
    except ValueError:
        raise NeurodashError(f"--timeout {args.timeout!r} is not a number of seconds") from None
    if not timeout > 0:
        raise NeurodashError(f"--timeout {args.timeout!r} must be above 0 seconds")
    return LLMExplainer(args.explainer, args.explainer_model, timeout).check()
