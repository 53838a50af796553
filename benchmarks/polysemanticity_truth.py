"""Polysemanticity scores against ground truth: a toy model of superposition whose neurons' number of
represented features is known (``precompute.ground_truth.superposition``).

    python benchmarks/polysemanticity_truth.py

Prints, for each score, its Spearman correlation with the true number of features over the toy's
neurons, and whether the monosemantic controls (neurons wired to a single feature) score lowest.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from precompute.ground_truth.superposition import MAIN_METRICS, ToyConfig, ground_truth, spearman  # noqa: E402


def main() -> None:
    started = time.perf_counter()
    cfg = ToyConfig()
    units, scores = ground_truth(cfg)
    truth = np.array([u.truth for u in units])
    control = np.array([u.control for u in units])
    print(
        f"toy: {len(cfg.sparsities)} instances x {len(cfg.set_sizes)} ReLU neurons, {cfg.n_features} features, "
        f"sparsity {cfg.sparsities}; {len(units)} live neurons ({control.sum()} controls), true counts "
        f"{truth.min()}-{truth.max()} (median {np.median(truth):.0f}); {time.perf_counter() - started:.0f} s"
    )
    print(
        "| score | Spearman with true count | controls' max | polysemantic (>= 2) units' min | controls lowest "
        "| (control, polysemantic) pairs ordered |"
    )
    print("|---|---|---|---|---|---|")
    for name, values in scores.items():
        if name == "n_examples":
            continue
        rho = spearman(values, truth)
        ordered = (values[control][:, None] < values[truth >= 2][None, :]).mean()
        main = " (main)" if name in MAIN_METRICS else ""
        if name == "bimodality":  # reversed: the sparse, monosemantic units score highest
            lo, hi = values[control].min(), np.median(values[truth >= 2])
            verdict = "highest" if lo > hi else "no"
            print(f"| `{name}` (reversed) | {rho:+.2f} | min {lo:.2f} | median {hi:.2f} | {verdict} | |")
            continue
        lo, hi = values[control].max(), values[truth >= 2].min()
        verdict = "yes" if lo < hi else "no"
        print(f"| `{name}`{main} | {rho:+.2f} | {lo:.2f} | {hi:.2f} | {verdict} | {ordered:.0%} |")


if __name__ == "__main__":
    main()
