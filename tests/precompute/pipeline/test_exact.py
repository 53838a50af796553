"""Exact merge on inputs built to break a naive one: sums whose float64 total depends on the order
(values over ~60 binary orders of magnitude), and activations full of ties (every example the same
value), split into shards and merged in several orders: every tensor of the state is bit-identical
to one accumulator's that saw every batch in order."""

from __future__ import annotations

import random

import numpy as np
import torch

from neurodash.config import AccumulatorConfig
from precompute.pipeline.accumulate import UnitAccumulator
from precompute.pipeline.exact import ExactSum


def wide_values(n: int, size: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [
        (
            torch.randn(size, generator=g) * torch.exp2(torch.randint(-30, 30, (size,), generator=g).float())
        ).float()
        for _ in range(n)
    ]


def test_exact_sum_is_the_same_in_any_order_and_split():
    values = wide_values(64, 500)
    whole = ExactSum((500,))
    for v in values:
        whole.add(v)
        whole.flush()
    rng = random.Random(0)
    for n_parts in (2, 3, 7):
        shuffled = values[:]
        rng.shuffle(shuffled)
        parts = [ExactSum((500,)) for _ in range(n_parts)]
        for i, v in enumerate(shuffled):
            parts[i % n_parts].add(v)
            parts[i % n_parts].flush()
        merged = ExactSum((500,))
        for p in reversed(parts):
            merged.merge(p)
        assert torch.equal(merged.value(), whole.value())
        assert torch.equal(merged.state(), whole.state())
    reference = np.sum([v.double().numpy() for v in values], 0)  # float64: within rounding of it
    scale = np.sum([np.abs(v.double().numpy()) for v in values], 0)
    assert (np.abs(whole.value().numpy() - reference) <= 1e-13 * scale).all()


def test_naive_float64_sums_would_differ():
    """The case above is a real test: float64 sums of the same values in two orders differ."""
    values = wide_values(64, 500)
    forward = torch.zeros(500, dtype=torch.float64)
    backward = torch.zeros(500, dtype=torch.float64)
    for v in values:
        forward += v.double()
    for v in reversed(values):
        backward += v.double()
    assert not torch.equal(forward, backward)


CFG = AccumulatorConfig(
    top_k=4, bottom_k=3, quantile_groups=2, per_group=3, window=6, window_before=3, hist_bins=8
)
N_UNITS, CTX, BATCH, BLOCK = 7, 12, 3, 2


def batches(n: int) -> list[torch.Tensor]:
    """Activations full of ties (halves in -3..3, a dead unit, a constant unit) and a wide range."""
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        a = torch.round(torch.randn(BATCH, CTX, N_UNITS, generator=g) * 2) / 2
        a[..., 0] = 0.0  # never fires: every example ties
        a[..., 1] = 1.5  # always the same value
        a[..., 2] *= torch.exp2(torch.randint(-20, 20, (BATCH, CTX), generator=g).float())
        out.append(a)
    return out


def accumulate(data: list[torch.Tensor], keep) -> UnitAccumulator:
    """One accumulator over the batches whose block ``keep`` accepts, flushing at each block's end."""
    acc = UnitAccumulator(N_UNITS, CTX, CFG)
    for i, a in enumerate(data):
        if keep(i // BLOCK):
            acc.update(a.clone(), torch.arange(i * BATCH, (i + 1) * BATCH), first=1, ctx=CTX)
        if (i + 1) % BLOCK == 0:
            acc.flush()
    acc.flush()
    return acc


def result_arrays(acc: UnitAccumulator) -> dict[str, np.ndarray]:
    """Every array of ``result()`` (what the store is written from), by name."""
    res = acc.result()
    out = {"max": res.max, "min": res.min, "density": res.density, "sample_keys": res.sample_keys}
    out |= {f"moments.{k}": np.asarray(v) for k, v in vars(res.moments).items()}
    out |= {"hist.bin_width": res.hist.bin_width, "hist.counts": res.hist.counts}
    for part in ("top", "bottom", "sample"):
        out |= {f"{part}.{k}": v for k, v in vars(getattr(res, part)).items() if v is not None}
    return out


def test_accumulators_merged_equal_one_accumulator():
    data = batches(14)
    whole = result_arrays(accumulate(data, lambda block: True))
    for n_shards in (2, 3):
        shards = [accumulate(data, lambda b, i=i, n=n_shards: b % n == i).state() for i in range(n_shards)]
        for order in (range(n_shards), reversed(range(n_shards))):
            merged = UnitAccumulator(N_UNITS, CTX, CFG)
            for i in order:
                merged.merge(shards[i])
            got = result_arrays(merged)
            assert got.keys() == whole.keys()
            for name, value in whole.items():
                np.testing.assert_array_equal(got[name], value, err_msg=f"{n_shards} shards: {name}")


def test_resumed_accumulator_equals_uninterrupted():
    data = batches(10)
    whole = accumulate(data, lambda block: True)
    first = accumulate(data[:6], lambda block: True)  # stopped at a block's end
    resumed = UnitAccumulator(N_UNITS, CTX, CFG)
    resumed.load_state({k: v.clone() for k, v in first.state().items()})
    for i, a in enumerate(data[6:], start=6):
        resumed.update(a.clone(), torch.arange(i * BATCH, (i + 1) * BATCH), first=1, ctx=CTX)
        if (i + 1) % BLOCK == 0:
            resumed.flush()
    for name, value in whole.state().items():
        assert torch.equal(resumed.state()[name], value), name
