"""``AttentionStats`` against plain float64 loops on random causal patterns: several layers of one
batch share the same-token weights built for its tokens, a new batch (or tokens changed in place)
gets its own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from precompute.pipeline.attention import CORPUS_METRICS, AttentionStats, one_thread

B, H, CTX, FIRST = 3, 4, 12, 1


def causal_pattern(rng: np.random.Generator) -> torch.Tensor:
    scores = rng.normal(size=(B, H, CTX, CTX)) * 3
    scores[:, :, np.triu_indices(CTX, 1)[0], np.triu_indices(CTX, 1)[1]] = -np.inf
    p = np.exp(scores - scores.max(-1, keepdims=True))
    return torch.from_numpy(p / p.sum(-1, keepdims=True)).float()


def brute(patterns: list[np.ndarray], tokens: list[np.ndarray]) -> dict[str, np.ndarray]:
    sums = {m: np.zeros(H) for m in CORPUS_METRICS}
    n = 0
    for pattern, toks in zip(patterns, tokens):
        for s in range(B):
            for q in range(FIRST, CTX):
                row = pattern[s, :, q, : q + 1].astype(np.float64)
                same = [k for k in range(q) if toks[s, k] == toks[s, q]]
                sums["attn_bos"] += row[:, 0]
                sums["attn_previous"] += row[:, q - 1]
                sums["attn_same_token"] += row[:, same].sum(1)
                sums["attn_distance"] += (row * (q - np.arange(q + 1))).sum(1)
                sums["attn_entropy"] -= (row * np.log(np.where(row > 0, row, 1))).sum(1)
                n += 1
    return {m: v / n for m, v in sums.items()}


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "torch"])
def test_statistics_equal_plain_loops_across_layers_and_batches(fused):
    rng = np.random.default_rng(0)
    layers = [AttentionStats(H, "cpu", fused) for _ in range(3)]
    seen: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in layers]
    tokens = torch.from_numpy(rng.integers(0, 4, size=(B, CTX)))  # few ids: many repeats
    for batch in range(3):
        if batch == 1:
            tokens = torch.from_numpy(rng.integers(0, 4, size=(B, CTX)))  # a new batch, a new object
        if batch == 2:
            tokens[:, 1::2] = torch.from_numpy(rng.integers(4, 8, size=(B, CTX // 2)))  # changed in place
        for stats, kept in zip(layers, seen):
            pattern = causal_pattern(rng)
            stats.update(pattern, tokens, FIRST)
            kept.append((pattern.numpy(), tokens.numpy().copy()))
    for stats, kept in zip(layers, seen):
        expected = brute([p for p, _ in kept], [t for _, t in kept])
        for metric, value in stats.result().items():
            np.testing.assert_allclose(value, expected[metric], rtol=1e-6, atol=1e-7, err_msg=metric)


def test_one_thread_restores_the_thread_count():
    before = torch.get_num_threads()
    with one_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
