"""The pattern explainer's scores over a store: neurons against SAE features, the shuffled control,
and how scores relate to the polysemanticity scores.

    python benchmarks/explain_scores.py STORE [--layers 15] [--explain] [--heldout-tokens 8192 | --no-fresh]
        [--n2g 200]

Scores are on fresh held-out text (the held-out store beside STORE, ``neurodash.heldout``, built if
needed), or with ``--no-fresh`` on the held-out windows of the store's own examples.
With ``--explain``, first runs ``explain_store`` (``--redo``) on the layers and prints its time. Then,
per source: the held-out correlation's quartiles and mean, the share of units at 0.5 or more, mean
precision and recall of "fires strongly"; the shuffled control (each unit scored with the patterns
of another unit of the same source, drawn at random); and Spearman's rank correlation of the
explanation's correlation with each polysemanticity score in the store.

With ``--n2g N``: N neurons and N features per layer, drawn at random, explained both from the store
alone (``pattern``) and with the model steps (``pattern+n2g``, ``precompute.n2g``); the time per unit
of each, and both explainers' scores on the same units side by side, with how many units the model
steps raise or lower by more than 0.05.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
import pandas as pd

from neurodash.explain import PATTERN, PATTERN_N2G, Explanation, score
from neurodash.explain_run import _unit_texts, explain_store
from neurodash.heldout import DEFAULT_TOKENS, HeldOutText, fresh_heldout
from neurodash.storage import Store
from neurodash.storage.explanations import Explanations
from neurodash.units import UnitRef

POLY_METRICS = ("polysemanticity", "token_diversity", "context_diversity", "sae_features")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("store", type=Path)
    p.add_argument("--layers", default="15")
    p.add_argument("--explain", action="store_true")
    p.add_argument("--shuffled", type=int, default=400, help="units per source in the shuffled control")
    p.add_argument("--heldout-tokens", type=int, default=DEFAULT_TOKENS)
    p.add_argument("--no-fresh", action="store_true", help="score on the store's own held-out windows")
    p.add_argument("--n2g", type=int, default=0, help="compare with the model steps on N units per source")
    args = p.parse_args()
    layers = tuple(int(x) for x in args.layers.split(","))
    fresh = None if args.no_fresh else args.heldout_tokens
    if args.n2g:
        compare_n2g(args.store, layers, args.n2g, fresh)
        return
    if args.explain:
        summary = explain_store(args.store, layers=layers, redo=True, fresh_tokens=fresh)
        print(f"explained {summary.done} units in {summary.seconds:.1f} s")
    held = HeldOutText() if fresh is None else fresh_heldout(args.store, layers, fresh, progress=False)
    print(f"held-out text: {held.record()}")
    explained = Explanations.beside(args.store).all(PATTERN)
    frame = explanations_frame(explained)
    with Store(args.store) as store:
        units = store.units_frame()
        frame = frame.merge(units, on=["source_id", "unit"], how="left")
        for source_id, group in frame.groupby("source_id"):
            if group["layer"].iloc[0] not in layers:
                continue
            report(source_id, group)
            shuffled(store, explained, source_id, args.shuffled, held)


def explanations_frame(explained: list[Explanation]) -> pd.DataFrame:
    """One row per explanation: its unit, explainer, scores and sizes."""
    return pd.DataFrame(
        [
            {
                "explainer": e.explainer,
                "source_id": e.ref.source_id,
                "unit": e.ref.unit,
                "correlation": e.correlation,
                "precision": e.precision,
                "recall": e.recall,
                "n_patterns": len(e.details.get("patterns", [])),
                "n_scored": e.n_scored,
                "n_firing": e.details.get("n_firing", 0),
            }
            for e in explained
        ]
    )


def report(source_id: str, g: pd.DataFrame) -> None:
    c = g["correlation"].dropna()
    q = c.quantile([0.25, 0.5, 0.75]).round(2).tolist()
    print(
        f"\n{source_id}: {len(g)} units, {len(c)} scored; correlation quartiles {q}, mean {c.mean():.2f}, "
        f">= 0.5: {(c >= 0.5).mean():.0%}; precision {g['precision'].mean():.2f}, recall {g['recall'].mean():.2f}; "
        f"patterns per unit {g['n_patterns'].mean():.1f}"
    )
    print(
        f"  held-out tokens per unit: median {g['n_scored'].median():.0f}; units that fire strongly on them: "
        f"{(g['n_firing'] > 0).mean():.0%} (median {g['n_firing'].median():.0f} such tokens)"
    )
    firing = g[g["n_firing"] > 0]["correlation"].dropna()
    print(
        f"  over the {len(firing)} units that do: correlation quartiles "
        f"{firing.quantile([0.25, 0.5, 0.75]).round(2).tolist()}, >= 0.5: {(firing >= 0.5).mean():.0%}"
    )
    for metric in POLY_METRICS:
        if metric in g and g[metric].notna().sum() > 10:
            both = g[["correlation", metric]].dropna()
            rho = both["correlation"].rank().corr(both[metric].rank())
            print(f"  Spearman(correlation, {metric}) = {rho:+.2f} over {len(both)} units")


def shuffled(store: Store, explained, source_id: str, n: int, held: HeldOutText) -> None:
    """Each of ``n`` units scored with another unit's patterns."""
    mine = [e for e in explained if e.ref.source_id == source_id]
    rng = random.Random(0)
    chosen = rng.sample(mine, min(n, len(mine)))
    texts = {t.ref: t for t in _unit_texts(store, [e.ref for e in chosen], held)}
    vocab = store.vocab
    values = []
    for e in chosen:
        other = rng.choice([x for x in mine if x.ref != e.ref])
        s = score(other.patterns(), texts[UnitRef(source_id, e.ref.unit)], vocab)
        if s.correlation is not None:
            values.append(s.correlation)
    v = np.asarray(values)
    print(
        f"  shuffled control: mean {v.mean():+.3f}, |r| >= 0.2: {(np.abs(v) >= 0.2).mean():.1%} ({len(v)} units)"
    )


def compare_n2g(store_path: Path, layers: tuple[int, ...], n: int, fresh: int | None) -> None:
    """The store-only explainer against the one with the model steps, on the same sampled units."""
    from precompute.n2g import load_n2g

    with Store(store_path) as store:
        sources = [s for s in store.sources() if s.layer in layers and s.kind != "head"]
    rng = random.Random(0)
    units = [
        f"{s.source_id}/{u}" for s in sources for u in sorted(rng.sample(range(s.n_units), min(n, s.n_units)))
    ]
    out = Path(store_path).with_suffix(".n2g-bench.duckdb")
    out.unlink(missing_ok=True)  # both explainers on exactly these units
    plain = explain_store(store_path, units=units, out=out, redo=True, fresh_tokens=fresh)
    began = time.perf_counter()
    with_model = explain_store(
        store_path, units=units, explainer=load_n2g(str(store_path)), out=out, redo=True, fresh_tokens=fresh
    )
    load = time.perf_counter() - began - with_model.seconds
    print(
        f"{len(units)} units: pattern {plain.seconds / len(units) * 1000:.0f} ms/unit, pattern+n2g "
        f"{with_model.seconds / len(units):.2f} s/unit (model and SAE loaded in {load:.0f} s)"
    )
    frame = explanations_frame(Explanations(out).all())
    for (source_id, explainer), g in frame.groupby(["source_id", "explainer"]):
        report(f"{source_id} {explainer}", g)
    wide = frame.pivot_table(index=["source_id", "unit"], columns="explainer", values="correlation")
    for source_id, g in wide.groupby(level=0):
        d = (g[PATTERN_N2G] - g[PATTERN]).dropna()
        print(
            f"{source_id}: model steps minus store alone, correlation: mean {d.mean():+.3f}, median "
            f"{d.median():+.3f}; raised > 0.05 on {(d > 0.05).mean():.0%}, lowered on {(d < -0.05).mean():.0%} "
            f"({len(d)} units)"
        )


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"\n({time.perf_counter() - started:.0f} s)")
