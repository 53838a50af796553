"""Activation maximization on the demo store: does the best found prompt beat the best corpus example?

For ``--units`` units sampled (seeded) across the store's sources (neuron layers and the SAE), each
with default settings: the best found activation against the unit's corpus max, the cross-entropy
of the frontier's prompts (and, for scale, of the corpus contexts the search starts from), and the
time per unit. Then, side by side on one middle-layer unit, the cost of screening candidates with
the truncated forward pass (up to the hook) against evaluating them all with the full one.

    python benchmarks/maximize_quality.py [--store demo.duckdb] [--units 20] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from neurodash import paths
from neurodash.storage import Store
from neurodash.units import UnitRef
from precompute.live.maximize import (
    MaximizeConfig,
    UnitObjective,
    corpus_seeds,
    maximize_many,
    unit_objective,
)
from precompute.live.probe import cached_model


def sample_units(store: Store, n: int, seed: int) -> list[UnitRef]:
    """``n`` units from sources spread evenly over the store (layers in order, SAE features too), each a
    random unit that fires somewhere in the corpus."""
    rng = np.random.default_rng(seed)
    sources = sorted(store.sources(), key=lambda s: (s.layer, s.kind))
    picks = [sources[int(i)] for i in np.linspace(0, len(sources) - 1, n).round()]
    units = []
    for source in picks:
        frame = store.units_frame(source.source_id)
        firing = frame[frame["max_act"] > 0]["unit"].to_numpy()
        units.append(UnitRef(source.source_id, int(rng.choice(firing))))
    return units


def screening_costs(
    store: Store, ref: UnitRef, config: MaximizeConfig, repeats: int = 3
) -> tuple[float, float]:
    """Seconds to screen ``batch`` candidates (forward up to the hook) and to evaluate them fully (logits)."""
    model = cached_model(store.meta["model"])
    objective = unit_objective(model, store.source(ref.source_id), ref.unit)
    allowed = objective.allowed.nonzero().squeeze(1)
    g = torch.Generator().manual_seed(0)
    tokens = allowed[torch.randint(len(allowed), (config.batch, config.length), generator=g)]

    def best(f) -> float:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            f(tokens)
            times.append(time.perf_counter() - t)
        return min(times)

    return best(objective.screen), best(objective.evaluate)


def seed_cross_entropy(objective: UnitObjective, seeds: list[list[int]]) -> float | None:
    """Mean cross-entropy of the corpus contexts (as fluent as the corpus is)."""
    seeds = [s for s in seeds if s]
    if not seeds:
        return None
    n = min(len(s) for s in seeds)
    tokens = torch.tensor([s[-n:] for s in seeds])
    _, logp = objective.evaluate(tokens)
    return -logp.gather(2, tokens[..., None]).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=str(paths.demo_store_path()))
    parser.add_argument("--units", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=MaximizeConfig.steps)
    args = parser.parse_args()
    config = MaximizeConfig(steps=args.steps)
    print(
        f"torch threads {torch.get_num_threads()}, CPUs {os.cpu_count()}, load average before "
        + " ".join(f"{x:.1f}" for x in os.getloadavg())
    )
    with Store(args.store) as store:
        refs = sample_units(store, args.units, args.seed)
        model = cached_model(store.meta["model"])
        seed_ce = {}
        for ref in refs:
            objective = unit_objective(model, store.source(ref.source_id), ref.unit)
            seeds = corpus_seeds(store, ref, config.length, config.corpus_seeds, model.bos_token_id)
            seed_ce[ref] = seed_cross_entropy(objective, seeds)
        layers = {s.source_id: s.layer for s in store.sources()}

    columns = [
        "unit",
        "layer",
        "corpus max",
        "best found",
        "ratio",
        "CE of best",
        "CE of most fluent",
        "CE of corpus seeds",
        "frontier",
        "seconds",
    ]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    rows = []
    for f in maximize_many(args.store, refs, config):
        best, fluent = f.best, f.prompts[0]
        rows.append((f, layers[f.ref.source_id]))
        sce = seed_ce[f.ref]
        print(
            f"| {f.ref} | {layers[f.ref.source_id]} | {f.corpus_max:.3f} | {best.activation:.3f} | "
            f"{best.activation / f.corpus_max:.2f}x | {best.cross_entropy:.2f} | {fluent.cross_entropy:.2f} | "
            f"{'-' if sce is None else f'{sce:.2f}'} | {len(f.prompts)} | {f.seconds:.0f} |",
            flush=True,
        )

    beats = [f.best.activation > f.corpus_max for f, _ in rows]
    middle = [f.seconds for f, layer in rows if 10 <= layer <= 20]
    print()
    print(
        f"best found prompt beats the best corpus example: {sum(beats)}/{len(beats)} ({np.mean(beats):.0%})"
    )
    print(
        f"median ratio best found / corpus max: {statistics.median(f.best.activation / f.corpus_max for f, _ in rows):.2f}x"
    )
    print(
        f"cross-entropy (nats/token), median: best prompts {statistics.median(f.best.cross_entropy for f, _ in rows):.2f}, "
        f"most fluent frontier prompts {statistics.median(f.prompts[0].cross_entropy for f, _ in rows):.2f}, "
        f"corpus seeds {statistics.median(c for c in seed_ce.values() if c is not None):.2f}"
    )
    print(
        f"seconds per unit: mean {np.mean([f.seconds for f, _ in rows]):.0f}, "
        f"middle layers (10-20) mean {np.mean(middle) if middle else float('nan'):.0f}, "
        f"max {max(f.seconds for f, _ in rows):.0f} "
        f"({config.steps} steps, population {config.population}, batch {config.batch}, shortlist {config.shortlist})"
    )
    with Store(args.store) as store:
        mid = next((f.ref for f, layer in rows if 10 <= layer <= 20), rows[0][0].ref)
        deepest = max(rows, key=lambda r: r[1])[0].ref
        for ref in dict.fromkeys([mid, deepest]):
            screen, full = screening_costs(store, ref, config)
            print(
                f"screening {config.batch} candidates of {ref}: truncated forward {screen:.2f} s, full forward "
                f"{full:.2f} s (truncated / full {screen / full:.2f})"
            )
    print("load average after " + " ".join(f"{x:.1f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
