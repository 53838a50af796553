"""Logit effects in blocks of units on the device equal brute force over the whole [units, vocab]."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from precompute.models import load_model
from precompute.pipeline import tables
from precompute.pipeline.accumulate import NotFinite
from precompute.pipeline.tables import logit_block, logits_table, screened_logit_arrays, top_effects

K = 7


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(str(tiny_model_dir), "cpu")


def brute_force(directions: torch.Tensor, unembed: torch.Tensor, k: int) -> dict[str, np.ndarray]:
    """Every unit's effects on the host, sorted: the top k of each sign, unit by unit."""
    effects = (directions.double() @ unembed.double()).numpy()  # [units, vocab], all of it
    up, down = (
        np.argsort(-effects, axis=1, kind="stable")[:, :k],
        np.argsort(effects, axis=1, kind="stable")[:, :k],
    )
    ids = np.stack([up, down], 1)  # [units, sign, k]
    return {"token_id": ids.reshape(-1), "value": np.take_along_axis(effects[:, None], ids, 2).reshape(-1)}


@pytest.mark.parametrize("screened", [True, False], ids=["bf16-screened", "float32"])
@pytest.mark.parametrize("block", [1, 5, 17, None])
def test_blocks_of_units_equal_brute_force(tiny, block, screened, monkeypatch):
    """Both ways: the float32 product, and the bfloat16 screen with exact products of the tokens it
    keeps (where the CPU computes in bfloat16 natively; forced here either way)."""
    monkeypatch.setattr(tables, "screens", lambda unembed: screened)
    unembed = tiny.unembed()
    for layer in range(tiny.n_layers):
        directions = tiny.mlp_out_directions(layer)
        got = logits_table("L.mlp", directions, unembed, K, block=block)
        want = brute_force(directions, unembed, K)
        n = directions.shape[0]
        np.testing.assert_array_equal(got["unit"], np.repeat(np.arange(n), 2 * K))
        np.testing.assert_array_equal(got["sign"], np.tile(np.repeat(["+", "-"], K), n))
        np.testing.assert_array_equal(got["rank"], np.tile(np.arange(K), 2 * n))
        np.testing.assert_array_equal(got["token_id"], want["token_id"])
        np.testing.assert_allclose(got["value"], want["value"], rtol=1e-5, atol=1e-6)


def test_block_size_keeps_the_product_under_budget():
    assert logit_block(262_144) == 256  # a 262k vocabulary: 256 units x vocab x 4 bytes = 256 MiB
    assert logit_block(49_152, budget=4 * 49_152 * 3 + 1) == 3
    assert logit_block(10**9) == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [1, 3, 64, 65, 300])
def test_top_effects_on_the_cpu_break_ties_as_a_stable_sort(k, dtype):
    """Rows of small integers (ties everywhere, across the kernel's chunks of 64 columns), in two
    chunks of rows: the CPU's one-read kernel picks what a stable sort of each row does, values and
    token ids, for k up to the row's length."""
    rows = torch.randint(-3, 4, (9, 300), generator=torch.Generator().manual_seed(k)).to(dtype)
    rows[2, 100:] = 5  # a row whose later chunks all tie with its top
    up_vals, up_ids, down_vals, down_ids = top_effects([rows[:4], rows[4:]], k)
    x = rows.numpy()
    for got_ids, got_vals, order in ((up_ids, up_vals, -x), (down_ids, down_vals, x)):
        want = np.argsort(order, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(got_ids.numpy(), want)
        np.testing.assert_array_equal(got_vals.numpy(), np.take_along_axis(x, want, 1))
    with pytest.raises(ValueError, match="top 301 of 300"):
        top_effects([rows], 301)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # the kernel; torch's topk
@pytest.mark.parametrize("column", [0, 200])  # among the first k; in a later chunk
def test_logit_effects_that_are_nan_stop_the_run(dtype, column):
    rows = torch.randn(3, 300).to(dtype)
    rows[1, column] = torch.nan
    with pytest.raises(NotFinite, match="logit effects that are NaN"):
        top_effects([rows], K)


@pytest.mark.parametrize("k", [1, 3, 10, 40])
def test_the_screen_breaks_ties_as_a_stable_sort_of_the_exact_products(k):
    """Small integers (exact in bfloat16, products exact): ties everywhere, across the screen's
    chunks of columns. The screen keeps what a stable sort of each row of exact products does."""
    g = torch.Generator().manual_seed(k)
    directions = torch.randint(-2, 3, (37, 16), generator=g).float()
    directions[5] = 0.0  # a unit whose every effect ties
    unembed = torch.randint(-2, 3, (16, 40), generator=g).float()
    got = screened_logit_arrays(directions, unembed, k, block=8)
    exact = (directions.double() @ unembed.double()).numpy()
    for sign, order in ((0, -exact), (1, exact)):
        want = np.argsort(order, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(got["token_id"][:, sign], want)
        np.testing.assert_array_equal(got["value"][:, sign], np.take_along_axis(exact, want, 1))


def test_the_screen_equals_brute_force_on_the_real_models_scale():
    """Rows and tokens like the default model's (d 576, a 4096-token slice), random: the screened
    lists are those of the exact products, rounded to float32, ties to the lower token."""
    g = torch.Generator().manual_seed(0)
    directions = torch.randn((300, 576), generator=g) * torch.rand((300, 1), generator=g)
    unembed = torch.randn((576, 4096), generator=g) * torch.rand((1, 4096), generator=g) * 3
    got = screened_logit_arrays(directions, unembed, K, block=128)
    exact = (directions.double() @ unembed.double()).numpy().astype(np.float32)
    for sign, order in ((0, -exact), (1, exact)):
        want = np.argsort(order, axis=1, kind="stable")[:, :K]
        np.testing.assert_array_equal(got["token_id"][:, sign], want)
        np.testing.assert_array_equal(got["value"][:, sign], np.take_along_axis(exact, want, 1))


@pytest.mark.parametrize("bad", [torch.nan, torch.inf])
def test_the_screen_stops_on_weights_that_are_not_finite(bad):
    directions, unembed = torch.randn(4, 16), torch.randn(16, 50)
    directions[2, 3] = bad
    with pytest.raises(NotFinite, match="logit effects that are not finite"):
        screened_logit_arrays(directions, unembed, K, block=2)
    directions[2, 3] = 0.0
    unembed[7, 11] = bad
    with pytest.raises(NotFinite, match="logit effects that are not finite"):
        screened_logit_arrays(directions, unembed, K, block=2)


def exact_lists(directions: torch.Tensor, unembed: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids [units, sign, k] and values of the exact products rounded to float32, ties to the lower id."""
    exact = (directions.double() @ unembed.double()).numpy().astype(np.float32)
    ids = np.stack(
        [np.argsort(-exact, 1, kind="stable")[:, :k], np.argsort(exact, 1, kind="stable")[:, :k]], 1
    )
    return ids, np.take_along_axis(exact[:, None], ids, 2)


@pytest.mark.parametrize("where", ["directions", "unembed", "overflow"])
def test_weights_outside_the_screens_bounds_take_the_float32_product(where):
    """The screen's bounds assume normal floats far from overflow: a row of float32 subnormals facing
    large tokens (oneDNN reads them as 0), or products near float32's largest, take the plain product."""
    g = torch.Generator().manual_seed(1)
    directions, unembed = torch.randn((64, 576), generator=g), torch.randn((576, 1000), generator=g)
    if where == "directions":
        directions[7] *= 1e-39
        unembed *= 1e9
    elif where == "unembed":
        unembed[:, 3] *= 1e-39
        directions *= 1e9
    else:
        directions, unembed = directions * 1e18, unembed * 1e18
    assert not tables._in_range(directions, unembed)
    got = tables.logit_arrays(directions, unembed, K)
    ids, values = exact_lists(directions, unembed, K)
    np.testing.assert_array_equal(got["token_id"][[7, 0, 1]], ids[[7, 0, 1]])
    np.testing.assert_allclose(got["value"], values, rtol=1e-5)


def test_the_screen_gives_a_zero_direction_its_lowest_tokens():
    """Every effect of a zero direction (a dead unit) is exactly 0: the lowest token ids, on both sides."""
    directions, unembed = torch.randn((5, 32)), torch.randn((32, 300))
    directions[3] = 0.0
    got = screened_logit_arrays(directions, unembed, K, block=4)
    np.testing.assert_array_equal(got["token_id"][3], [np.arange(K), np.arange(K)])
    np.testing.assert_array_equal(got["value"][3], 0.0)
    ids, _ = exact_lists(directions, unembed, K)
    np.testing.assert_array_equal(got["token_id"], ids)
