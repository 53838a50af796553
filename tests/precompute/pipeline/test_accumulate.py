"""Ground truth for the streaming accumulator: every statistic and example equals brute force."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest
import torch

from neurodash.config import AccumulatorConfig
from precompute.pipeline import fused as fused_kernels
from precompute.pipeline.accumulate import (
    NO_KEY,
    AccumulatorResult,
    NotFinite,
    UnitAccumulator,
    rank_key,
    token_hash,
    unit_salts,
)
from precompute.pipeline.tables import examples_table

CFG = AccumulatorConfig(
    top_k=5, bottom_k=3, quantile_groups=3, per_group=2, window=8, window_before=5, hist_bins=16
)
N_SEQ, T, U, BATCH, FIRST = 23, 20, 12, 4, 1


@pytest.fixture(scope="module")
def acts() -> np.ndarray:
    """Activations of units with different shapes: dense signed, sparse ReLU, heavy-tailed, dead."""
    g = np.random.default_rng(0)
    x = g.standard_normal((N_SEQ, T, U)).astype(np.float32)
    x[..., 1:4] = np.maximum(x[..., 1:4] - 1.5, 0)  # sparse, non-negative (SAE-like, many exact zeros)
    x[..., 4] = np.exp(2 * x[..., 4])  # heavy tail, always positive
    x[..., 5] = 0.0  # dead
    x[..., 6] = np.where(g.random((N_SEQ, T)) < 0.01, 7.0 + g.random((N_SEQ, T)), 0.0)  # rare
    x[..., 7] *= 1000  # large scale
    x[:, 0, :] = 50.0  # an attention-sink position that must stay out of everything
    return x


def accumulate(acts: np.ndarray, fused: bool) -> AccumulatorResult:
    acc = UnitAccumulator(acts.shape[2], T, CFG, fused=fused)
    for s in range(0, len(acts), BATCH):
        batch = torch.from_numpy(acts[s : s + BATCH].copy())
        acc.update(batch, torch.arange(s, min(s + BATCH, len(acts))), first=FIRST, ctx=T)
        assert torch.equal(batch, torch.from_numpy(acts[s : s + BATCH])), "update must restore its input"
    return acc.result()


@pytest.fixture(scope="module", params=[True, False], ids=["fused", "torch"])
def result(acts, request) -> AccumulatorResult:
    """Both ways of reading a batch: the CPU's one-pass kernels and torch's operations."""
    return accumulate(acts, request.param)


def assert_same_state(fused: AccumulatorResult, plain: AccumulatorResult) -> None:
    for name in ("max", "min", "density", "sample_keys"):
        np.testing.assert_array_equal(getattr(fused, name), getattr(plain, name))
    np.testing.assert_array_equal(fused.hist.counts, plain.hist.counts)
    np.testing.assert_array_equal(fused.hist.bin_width, plain.hist.bin_width)
    for part in ("top", "bottom", "sample"):
        for field in ("val", "seq", "pos", "start", "win"):
            np.testing.assert_array_equal(
                getattr(getattr(fused, part), field), getattr(getattr(plain, part), field)
            )
    # The sums differ in rounding only: float64 in token order against float32 per batch.
    for m in ("mean", "std", "skew", "kurtosis"):
        np.testing.assert_allclose(getattr(fused.moments, m), getattr(plain.moments, m), rtol=1e-5, atol=1e-6)


def test_the_one_pass_kernels_keep_the_same_state_as_torch(acts):
    assert_same_state(accumulate(acts, True), accumulate(acts, False))


@pytest.fixture(scope="module")
def wide_acts() -> np.ndarray:
    """More units than the largest block (``fused.MAX_BLOCK``): several blocks a thread, the last partial."""
    g = np.random.default_rng(1)
    n_units = 2 * fused_kernels.MAX_BLOCK + 21
    x = (g.standard_normal((N_SEQ, T, n_units)) * g.random(n_units) * 4).astype(np.float32)
    x[..., ::3] = np.maximum(x[..., ::3] - 1, 0)  # sparse units
    x[5:, :, 7] *= 300  # a unit whose bins widen late
    x[5:, :, 400] *= 300  # and one in a later block
    x[:, 0, :] = 50.0
    return x


def test_the_parallel_kernels_keep_the_same_state_as_torch(wide_acts):
    assert_same_state(accumulate(wide_acts, True), accumulate(wide_acts, False))


def test_the_kernels_state_does_not_depend_on_the_threads(wide_acts, monkeypatch):
    """Blocks are sized by the thread count (``fused.block_size``); each unit is still read by one
    thread in token order, so every value, the float64 sums included, is the same bit for bit, for
    any number of threads and any block size."""
    n_units = wide_acts.shape[2]
    assert len({fused_kernels.block_size(n_units, t) for t in (1, 2, 5)}) == 3
    before = numba.get_num_threads()
    runs = []
    try:
        for threads, sized_for in [(1, 1), (numba.config.NUMBA_NUM_THREADS, 2), (1, 5)]:
            numba.set_num_threads(threads)
            monkeypatch.setattr(fused_kernels, "get_num_threads", lambda n=sized_for: n)
            runs.append(accumulate(wide_acts, True))
    finally:
        numba.set_num_threads(before)
    for other in runs[1:]:
        assert_same_state(runs[0], other)
        for m in ("mean", "std", "skew", "kurtosis"):
            np.testing.assert_array_equal(getattr(runs[0].moments, m), getattr(other.moments, m))


def test_blocks_split_the_units_evenly_over_the_threads():
    for n_units, threads in [(1536, 1), (1536, 2), (1536, 4), (1536, 16), (24576, 2), (9, 1), (533, 3)]:
        size = fused_kernels.block_size(n_units, threads)
        blocks = -(-n_units // size)
        assert size % 16 == 0 and fused_kernels.BLOCK <= size
        assert size <= fused_kernels.MAX_BLOCK or blocks == 1
        assert blocks == 1 or blocks % threads == 0 or blocks < threads


def window_of(acts: np.ndarray, seq: int, pos: int, unit: int) -> tuple[int, np.ndarray]:
    start = min(max(pos - CFG.window_before, 0), T - CFG.window)
    return start, acts[seq, start : start + CFG.window, unit]


def test_moments_and_density(acts, result):
    a = acts[:, FIRST:, :].reshape(-1, U).astype(np.float64)
    assert result.moments.count == a.shape[0]
    np.testing.assert_allclose(result.max, a.max(0), rtol=1e-6)
    np.testing.assert_allclose(result.min, a.min(0), rtol=1e-6)
    np.testing.assert_allclose(result.moments.mean, a.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.moments.std, a.std(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result.density, (a > 0).mean(0))
    centered = a - a.mean(0)
    var = centered.var(0)
    live = var > 0
    np.testing.assert_allclose(
        result.moments.skew[live], (centered**3).mean(0)[live] / var[live] ** 1.5, rtol=1e-3
    )
    np.testing.assert_allclose(
        result.moments.kurtosis[live], (centered**4).mean(0)[live] / var[live] ** 2, rtol=1e-3
    )


def test_histogram_equals_binning_every_activation(acts, result):
    a = acts[:, FIRST:, :].reshape(-1, U).astype(np.float64)
    h = CFG.hist_bins
    for u in range(U):
        w = result.hist.bin_width[u] or 1.0
        assert np.abs(a[:, u]).max() < h * w, "bins cover every value"
        expected = np.bincount((np.ceil(a[:, u] / w) - 1 + h).astype(int), minlength=2 * h)
        np.testing.assert_array_equal(result.hist.counts[u], expected)
        assert result.hist.counts[u][h:].sum() == (a[:, u] > 0).sum()  # bins k >= 0 are the firing tokens


def test_top_and_bottom_examples(acts, result):
    body = acts[:, FIRST:, :]
    for name, extreme, k, sign in (
        ("top", body.max(1), CFG.top_k, 1),
        ("bottom", body.min(1), CFG.bottom_k, -1),
    ):
        got = getattr(result, name)
        for u in range(U):
            order = np.argsort(-sign * extreme[:, u], kind="stable")
            expected = [s for s in order[:k] if sign * extreme[s, u] > 0]
            valid = got.val[u] > 0
            assert valid.sum() == len(expected), (name, u)
            np.testing.assert_allclose(sign * got.val[u][valid], extreme[expected, u])
            np.testing.assert_array_equal(got.seq[u][valid], expected)
            for slot, seq in enumerate(expected):
                pos = int(np.argmax(sign * body[seq, :, u])) + FIRST
                assert got.pos[u][slot] == pos
                start, window = window_of(acts, seq, pos, u)
                assert got.start[u][slot] == start
                np.testing.assert_array_equal(got.win[u][slot], window)


def test_quantile_sample_is_the_smallest_keys_among_firing_tokens(acts, result):
    seq, pos = np.meshgrid(np.arange(N_SEQ), np.arange(FIRST, T), indexing="ij")
    token_keys = token_hash(torch.from_numpy(seq * T + pos)).numpy()
    salts = unit_salts(U).numpy()
    r = CFG.sample_size
    for u in range(U):
        firing = acts[:, FIRST:, u] > 0
        keys = (token_keys ^ salts[u])[firing]
        chosen = np.argsort(keys, kind="stable")[:r]
        sample = result.sample
        valid = result.sample_keys[u] < NO_KEY
        assert valid.sum() == len(chosen)
        np.testing.assert_array_equal(result.sample_keys[u][valid], keys[chosen])
        np.testing.assert_array_equal(sample.seq[u][valid], seq[firing][chosen])
        np.testing.assert_array_equal(sample.pos[u][valid], pos[firing][chosen])
        np.testing.assert_array_equal(sample.val[u][valid], acts[:, FIRST:, u][firing][chosen])
        for slot in np.flatnonzero(valid):
            start, window = window_of(acts, sample.seq[u][slot], sample.pos[u][slot], u)
            np.testing.assert_array_equal(sample.win[u][slot], window)


def test_quantile_groups_split_the_sorted_sample(result):
    table = examples_table("L0.mlp", result, CFG)
    groups = [f"q{g / CFG.quantile_groups:.2f}" for g in range(CFG.quantile_groups)]
    sample = result.sample
    for u in range(U):
        values = np.sort(sample.val[u][result.sample_keys[u] < NO_KEY])
        n = len(values)
        for g, name in enumerate(groups):
            rows = (table["unit"] == u) & (table["bucket"] == name)
            expected = values[[i for i in range(n) if i * CFG.quantile_groups // n == g]][::-1]
            acts_at_pos = [
                a[p - s] for a, p, s in zip(table["acts"][rows], table["pos"][rows], table["start"][rows])
            ]
            np.testing.assert_array_equal(acts_at_pos, expected)
            np.testing.assert_array_equal(table["rank"][rows], np.arange(len(expected)))


def test_dead_unit_has_no_examples(result):
    table = examples_table("L0.mlp", result, CFG)
    assert not (table["unit"] == 5).any()
    assert result.density[5] == 0 and result.max[5] == 0


def test_keep_bos_counts_the_first_position():
    x = torch.zeros(2, 6, 3)
    x[:, 0] = 9.0
    acc = UnitAccumulator(3, 6, CFG)
    acc.update(x.clone(), torch.arange(2), first=0)
    res = acc.result()
    assert res.moments.count == 12 and res.max[0] == 9.0 and res.top.pos[0][0] == 0


def test_values_copied_at_the_entrants_tokens_match_torch(acts):
    """What top and sampled examples copy at their token: per token (a half-precision
    representation, the token id) and per unit (a head's attention row, read through a transposed
    view, as the pass hands it over). The kernels' ``take`` against torch's gathers."""
    g = np.random.default_rng(3)
    rep = torch.from_numpy(g.standard_normal((N_SEQ, T, 6)).astype(np.float16))
    tok = torch.from_numpy(g.integers(0, 1000, (N_SEQ, T)).astype(np.int32))
    rows = torch.from_numpy(g.random((N_SEQ, U, T, 7)).astype(np.float32))  # [b, unit, q, key]
    results = []
    for fused in (True, False):
        acc = UnitAccumulator(U, T, CFG, fused=fused)
        for s in range(0, N_SEQ, BATCH):
            batch = slice(s, s + BATCH)
            acc.update(
                torch.from_numpy(acts[batch].copy()),
                torch.arange(s, min(s + BATCH, N_SEQ)),
                first=FIRST,
                ctx=T,
                at_token={"rep": rep[batch], "tok": tok[batch]},
                at_unit={"attn": rows[batch].transpose(1, 2)},
            )
        results.append(acc.result())
    for part in ("top", "sample"):
        mine, theirs = (getattr(r, part) for r in results)
        for field in ("tok", "rep", "attn"):
            assert getattr(mine, field) is not None
            np.testing.assert_array_equal(
                getattr(mine, field), getattr(theirs, field), err_msg=f"{part}.{field}"
            )
        entered = mine.seq >= 0
        b, t, u = mine.seq[entered], mine.pos[entered], np.nonzero(entered)[0]
        np.testing.assert_array_equal(mine.tok[entered], tok.numpy()[b, t])
        np.testing.assert_array_equal(mine.attn[entered], rows.numpy()[b, u, t])


def test_no_quantile_sample_and_tiny_units_keep_the_same_state_as_torch():
    """``per_group=0`` keeps no sample; a unit whose values are ~1e-39 (float32's subnormals) gets bins
    narrower than 2**-126, whose inverse float32 cannot hold: the kernels bin it in float64."""
    cfg = AccumulatorConfig(top_k=3, bottom_k=2, quantile_groups=2, per_group=0, window=4, window_before=2)
    g = np.random.default_rng(2)
    x = g.standard_normal((9, 10, 5)).astype(np.float32)
    x[..., 4] *= np.float32(1e-39)
    results = []
    for fused in (True, False):
        acc = UnitAccumulator(5, 10, cfg, fused=fused)
        for s in range(0, 9, 3):
            acc.update(torch.from_numpy(x[s : s + 3].copy()), torch.arange(s, s + 3), first=1, ctx=10)
        results.append(acc.result())
    fused, plain = results
    assert fused.sample.val.shape == (5, 0)
    np.testing.assert_array_equal(fused.top.val, plain.top.val)
    np.testing.assert_array_equal(fused.hist.counts[:4], plain.hist.counts[:4])
    a = x[:, 1:, 4].reshape(-1).astype(np.float64)
    w, h = fused.hist.bin_width[4], cfg.hist_bins
    assert 0 < w < 2.0**-126 and np.abs(a).max() < h * w
    np.testing.assert_array_equal(
        fused.hist.counts[4], np.bincount((np.ceil(a / w) - 1 + h).astype(int), minlength=2 * h)
    )


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("bad", [torch.nan, torch.inf])
def test_activations_that_are_not_finite_stop_the_run(fused, bad):
    """One line naming the source (the CLI's exit 2), at the batch that holds them, on both paths."""
    acc = UnitAccumulator(U, T, CFG, fused=fused, name="L3.mlp")
    x = torch.zeros(2, T, U)
    x[1, 4, 2] = bad
    with pytest.raises(NotFinite, match=r"^L3\.mlp: activations that are not finite"):
        acc.update(x, torch.arange(2), first=FIRST, ctx=T)


def test_the_kernels_threads_follow_torchs():
    """numba's pool takes OMP_NUM_THREADS, as torch does (torchrun gives each rank 1: a larger pool
    spins on the other ranks' cores), and ``use_threads`` (what ``prepare`` calls with torch's
    count) sets the kernels' threads, within the pool."""
    root = Path(__file__).resolve().parents[3]
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_NUM_THREADS"}
    code = "import precompute.pipeline.fused, numba; print(numba.config.NUMBA_NUM_THREADS)"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "1"
    before = numba.get_num_threads()
    try:
        fused_kernels.use_threads(1)
        assert numba.get_num_threads() == 1
        fused_kernels.use_threads(10_000)
        assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS
    finally:
        numba.set_num_threads(before)


def test_the_kernels_rank_examples_as_rank_key_does():
    """``fused._rank_key`` (what ``enter`` orders slots and candidates by) is ``rank_key``: signed
    zeros, infinities, subnormals, ties broken by the earlier sequence, empty slots (seq -1)."""
    tiny = np.float32(1e-45)
    vals = np.array([0.0, -0.0, np.inf, -np.inf, tiny, -tiny, 1.5, -1.5, 3e38, -3e38], dtype=np.float32)
    seqs = np.array([-1, 0, 1, 2**32 - 2])
    val, seq = (a.ravel() for a in np.meshgrid(vals, seqs))
    expected = rank_key(torch.from_numpy(val), torch.from_numpy(seq)).numpy()
    got = [fused_kernels._rank_key(b, s) for b, s in zip(val.view(np.int32), seq, strict=True)]
    np.testing.assert_array_equal(got, expected)


def test_a_source_without_units_has_blocks_too():
    assert fused_kernels.block_size(0, 2) == fused_kernels.BLOCK


def test_a_sampled_token_whose_key_ties_goes_to_the_earlier_token_in_any_order():
    """Two tokens whose hashes collide (found by search): the sample keeps the earlier one, whether
    it comes first or last, in the kernels as in torch's sort."""
    cfg = AccumulatorConfig(top_k=1, bottom_k=0, quantile_groups=1, per_group=1, window=2, window_before=0)
    pos = torch.arange(400_000)
    keys = token_hash(pos, cfg.seed)
    order = torch.argsort(keys, stable=True)
    i = int(torch.nonzero(keys[order][1:] == keys[order][:-1])[0, 0])
    early, late = sorted((int(order[i]), int(order[i + 1])))
    ctx = 20
    for seqs in ([early // ctx, late // ctx], [late // ctx, early // ctx]):
        for fused in (True, False):
            acc = UnitAccumulator(1, ctx, cfg, fused=fused)
            for s in seqs:
                x = torch.zeros((1, ctx, 1))
                x[0, (early if s == early // ctx else late) % ctx, 0] = 1.0  # the one firing token
                acc.update(x, torch.tensor([s]), first=0, ctx=ctx)
            sample = acc.result().sample
            assert int(sample.seq[0, 0]) * ctx + int(sample.pos[0, 0]) == early, (seqs, fused)


def test_copies_with_no_sample_slots_or_no_units_and_a_mismatched_slot_refused():
    """``per_group=0`` keeps no sample slot, and a source may have no units: the copies have nothing
    to do. A value whose dtype or shape differs from its slots' is refused, not copied bit by bit."""
    cfg = AccumulatorConfig(top_k=2, bottom_k=1, quantile_groups=2, per_group=0, window=4, window_before=1)
    g = np.random.default_rng(4)
    for units in (3, 0):
        acts = torch.from_numpy(g.standard_normal((2, 6, units)).astype(np.float32))
        results = []
        for fused in (True, False):
            acc = UnitAccumulator(units, 6, cfg, fused=fused)
            acc.update(
                acts.clone(),
                torch.arange(2),
                first=1,
                at_token={"tok": torch.arange(12, dtype=torch.int32).view(2, 6)},
                at_unit={"attn": torch.ones((2, 6, units, 6))},
            )
            results.append(acc.result())
        fused_result, plain = results
        assert fused_result.sample.val.shape == (units, 0)
        np.testing.assert_array_equal(fused_result.top.tok, plain.top.tok)
        np.testing.assert_array_equal(fused_result.top.attn, plain.top.attn)
    acc = UnitAccumulator(3, 6, cfg, fused=True)
    x = torch.from_numpy(g.standard_normal((2, 6, 3)).astype(np.float32))
    acc.update(x, torch.arange(2), first=1, at_token={"rep": torch.zeros((2, 6, 4), dtype=torch.float16)})
    with pytest.raises(ValueError, match="rep"):
        acc.update(
            x, torch.arange(2, 4), first=1, at_token={"rep": torch.zeros((2, 6, 5), dtype=torch.float16)}
        )
