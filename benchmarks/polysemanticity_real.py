"""Polysemanticity scores on the real model, where no true count is known but two answers are:

    python benchmarks/polysemanticity_real.py [--tokens 65536] [--pairs 300]

1. **SAE features against neurons.** The features of an SAE are, by the field's measurements, more
   monosemantic than the neurons of the layer it reads; the scores should say so. Prints each score's
   median for the layer-15 neurons and the demo SAE's features, and the share of (feature, neuron)
   pairs in which the feature scores lower.
2. **Units made polysemantic by hand.** Merge the examples of two SAE features (half of each,
   interleaved by strength) into one synthetic unit: it responds to both things, so its diversity
   should exceed each half's alone. Prints how often it does and by how much, for each cosine
   threshold of the context clusters (the pipeline uses ``CLUSTER_COSINE``).

The examples and their context representations are the ones a ``precompute`` run keeps (read
where the pipeline hands them to ``polysemanticity_tables``), over ``--tokens`` of the embedded
corpus, with the demo's SAE (trained once by ``neurodash demo``, or here if missing).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from precompute.pipeline.polysemanticity import CLUSTER_COSINE, combined, example_scores  # noqa: E402

LAYER = 15
THRESHOLDS = (0.3, 0.4, 0.5, 0.6)


def kept_examples_of_a_run(tokens: int, sae: str | None = None) -> dict[str, dict]:
    """Each source's kept examples (``kept_examples``) and corpus-mean representation, from a real run."""
    from neurodash.cli import demo_sae
    from precompute import PrecomputeConfig, run_precompute
    from precompute.pipeline import tables
    from precompute.pipeline.polysemanticity import kept_examples

    kept: dict[str, dict] = {}
    score = tables.polysemanticity_tables

    def keep(sid: str, res, rep_mean: np.ndarray, dims: int):
        kept[sid] = {"kept": kept_examples(res.top, res.sample, dims), "rep_mean": rep_mean}
        return score(sid, res, rep_mean, dims)

    tables.polysemanticity_tables = keep  # run.py calls it through the module
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = PrecomputeConfig(
                out=Path(tmp) / "s.duckdb", layers=(LAYER,), tokens=tokens, saes=(sae or str(demo_sae()),)
            )
            run_precompute(cfg)
    finally:
        tables.polysemanticity_tables = score
    return kept


def scores(kept: dict, rep_mean: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """The pipeline's diversity scores (``example_scores``) at a cosine ``threshold``, and their combinations."""
    got = example_scores(kept, rep_mean, threshold)
    out = {name: got[name] for name in ("context_diversity", "token_diversity")}
    out["polysemanticity"] = combined(got["context_diversity"], got["token_diversity"])
    for name in ("context_diversity", "token_diversity"):
        out[f"{name}_weighted"] = got[f"{name}_weighted"]
    out["polysemanticity_weighted"] = combined(
        got["context_diversity_weighted"], got["token_diversity_weighted"]
    )
    return out


def merge(kept: dict, a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """Per pair, a synthetic unit with the first half of a's and of b's examples, interleaved; each
    half's activations on its own scale (divided by its unit's strongest), so both count alike."""
    n = kept["valid"].shape[1]
    half = n // 2
    out = {}
    scale = np.where(kept["valid"], kept["val"], 0).max(1, keepdims=True)
    relative = np.divide(kept["val"], scale, out=np.zeros(kept["val"].shape), where=scale > 0)
    for key, x in (("rep", kept["rep"]), ("tok", kept["tok"]), ("val", relative)):
        merged = np.zeros((len(a), n, *x.shape[2:]), dtype=x.dtype)
        merged[:, 0::2], merged[:, 1::2] = x[a, :half], x[b, :half]
        out[key] = merged
    out["valid"] = np.zeros((len(a), n), dtype=bool)
    out["valid"][:, 0::2], out["valid"][:, 1::2] = kept["valid"][a, :half], kept["valid"][b, :half]
    return out


def half(kept: dict, a: np.ndarray) -> dict[str, np.ndarray]:
    """Each unit's half that ``merge`` takes, alone (laid out as in a merge of a with itself, once)."""
    alone = merge(kept, a, a)
    alone["valid"][:, 1::2] = False
    return alone


def median_and_order(features: np.ndarray, neurons: np.ndarray) -> tuple[float, float, float]:
    f, n = features[np.isfinite(features)], neurons[np.isfinite(neurons)]
    return float(np.median(f)), float(np.median(n)), float((f[:, None] < n[None, :]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=65_536)
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sae", help="the SAE on layer 15's neurons (default: the demo's)")
    args = parser.parse_args()
    started = time.perf_counter()
    runs = kept_examples_of_a_run(args.tokens, args.sae)
    neurons, features = runs[f"L{LAYER}.mlp"], runs[f"L{LAYER}.sae"]
    print(
        f"\nlayer {LAYER}: {len(neurons['kept']['valid'])} neurons, {len(features['kept']['valid'])} SAE "
        f"features, {args.tokens} tokens; {time.perf_counter() - started:.0f} s"
    )

    print(f"\n1. SAE features against neurons (cosine threshold {CLUSTER_COSINE})")
    print("| score | features' median | neurons' median | (feature, neuron) pairs with the feature lower |")
    print("|---|---|---|---|")
    f_scores = scores(features["kept"], features["rep_mean"], CLUSTER_COSINE)
    n_scores = scores(neurons["kept"], neurons["rep_mean"], CLUSTER_COSINE)
    for name in f_scores:
        f, n, lower = median_and_order(f_scores[name], n_scores[name])
        print(f"| `{name}` | {f:.1f} | {n:.1f} | {lower:.0%} |")

    kept = features["kept"]
    full = np.flatnonzero(kept["valid"].all(1))  # features with a full set of examples
    rng = np.random.default_rng(args.seed)
    a, b = rng.choice(full, args.pairs), rng.choice(full, args.pairs)
    a, b = a[a != b], b[a != b]
    alone_a, alone_b, pair = half(kept, a), half(kept, b), merge(kept, a, b)
    print(f"\n2. {len(a)} pairs of SAE features merged into one unit (half of each one's examples)")
    print(
        "| score | cosine | merged above both halves | ... where both halves score at most 4 | median merged / larger half |"
    )
    print("|---|---|---|---|---|")
    for threshold in THRESHOLDS:
        got = [scores(x, features["rep_mean"], threshold) for x in (pair, alone_a, alone_b)]
        for name in (
            "context_diversity",
            "polysemanticity",
            "context_diversity_weighted",
            "polysemanticity_weighted",
        ):
            merged, larger = got[0][name], np.maximum(got[1][name], got[2][name])
            mark = " (used)" if threshold == CLUSTER_COSINE else ""
            focused = larger <= 4
            print(
                f"| `{name}` | {threshold}{mark} | {(merged > larger).mean():.0%} | "
                f"{(merged > larger)[focused].mean():.0%} of {focused.sum()} | {np.nanmedian(merged / larger):.2f} |"
            )
    for name in ("token_diversity", "token_diversity_weighted"):
        merged = scores(pair, features["rep_mean"], CLUSTER_COSINE)[name]
        halves = [scores(x, features["rep_mean"], CLUSTER_COSINE)[name] for x in (alone_a, alone_b)]
        larger = np.maximum(*halves)
        focused = larger <= 4
        print(
            f"| `{name}` | n/a | {(merged > larger).mean():.0%} | "
            f"{(merged > larger)[focused].mean():.0%} of {focused.sum()} | {np.nanmedian(merged / larger):.2f} |"
        )


if __name__ == "__main__":
    main()
