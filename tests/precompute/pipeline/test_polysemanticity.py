"""Polysemanticity score functions against hand-computed answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from precompute.pipeline.polysemanticity import (
    attributed_mass,
    attribution_sums,
    diversity,
    effective_number,
    evidence,
    evidence_weights,
    example_scores,
    feature_shares,
    n_covering,
)


def test_effective_number_counts_evenly_spread_weight():
    weights = np.array([[5.0, 0, 0, 0], [1, 1, 0, 0], [2, 2, 2, 2], [0, 0, 0, 0]])
    assert effective_number(weights) == pytest.approx([1, 2, 4, 0])


def test_effective_number_is_exp_entropy():
    p = np.array([0.5, 0.25, 0.25])
    assert effective_number(p * 8) == pytest.approx(np.exp(-(p * np.log(p)).sum()))


def test_n_covering_takes_the_largest_first():
    weights = np.array([[0.1, 0.7, 0.2], [1, 1, 1], [0, 0, 0]])
    assert n_covering(weights, 0.8).tolist() == [2, 3, 0]
    assert n_covering(np.array([[1.0, 1, 1, 1, 1]]), 0.8).tolist() == [4]  # exactly 80% is reached


def test_attributed_mass_splits_each_token_among_the_features_that_push_the_neuron_up():
    decoder = torch.tensor([[1.0, 0.0], [-1.0, 2.0], [0.5, 0.5]])  # 3 features writing to 2 neurons
    neurons = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-1.0, 3.0], [4.0, 4.0]])  # 4 tokens
    features = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 2.0]])
    mass = attributed_mass(neurons, features, decoder)
    # token 3: neuron 0 gets 1 * 1 from feature 0 and 2 * 0.5 from feature 2 (feature 1 pushes it
    # down), so its 4 splits 2 / 2; neuron 1 gets 1 * 2 and 2 * 0.5, so its 4 splits 8/3 / 4/3.
    expected = torch.tensor([[2 + 2, 0, 0 + 2], [0, 1 + 8 / 3, 3 + 4 / 3]])
    assert mass == pytest.approx(expected)
    assert feature_shares(mass.numpy())[0] == pytest.approx([2 / 3, 0, 1 / 3])
    flipped = attributed_mass(neurons, features, -decoder)  # now only feature 1 pushes neuron 0 up
    assert flipped == pytest.approx(torch.tensor([[0.0, 4, 0], [0, 0, 0]])), (
        "only features pushing it up count"
    )


def test_activation_no_feature_explains_is_left_unattributed():
    mass = attributed_mass(torch.tensor([[3.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0], [1.0]]))
    assert mass.sum() == 0 and feature_shares(mass.numpy()).tolist() == [[0.0, 0.0]]


def test_the_cpu_bridge_kernel_adds_what_the_dense_products_give():
    """``NeuronBridge.update`` on the CPU reads only the active features (``fused.bridge_sums``);
    its sums equal ``attribution_sums``' two dense products, over two batches, including a token
    that no feature explains and a feature that never fires."""
    from precompute.pipeline.stream import NeuronBridge

    g = torch.Generator().manual_seed(0)
    n_tokens, n_features, n_neurons = 50, 40, 70
    up = torch.randn(n_features, n_neurons, generator=g).clamp(min=0)
    bridge, want_plain, want_strong = NeuronBridge.on(up), 0, 0
    for _ in range(2):
        features = torch.rand(n_tokens, n_features, generator=g)
        features = torch.where(features > 0.85, features, 0.0)  # sparse, as an SAE's
        features[3] = 0.0  # a token no feature explains
        features[:, 7] = 0.0  # a feature that never fires
        neurons = torch.randn(n_tokens, n_neurons, generator=g)
        bridge.update(neurons, features)
        want_plain = want_plain + attribution_sums(neurons, features, up).double()
        want_strong = want_strong + attribution_sums(neurons, features, up, strong=True).double()
    bridge.attribution.flush()
    bridge.strong.flush()
    torch.testing.assert_close(bridge.attribution.value(), want_plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bridge.strong.value(), want_strong, rtol=1e-5, atol=1e-6)
    assert bridge.attribution.value()[7].abs().sum() == 0


def digit_like_units(n_top: int = 20, n_sample: int = 20, dims: int = 32) -> dict[str, np.ndarray]:
    """Kept examples of two units, strongest first. Unit 0 fires strongly on token 6 in every top
    example (in varied contexts) and weakly, once each, on 20 other tokens (a dense unit's background);
    unit 1 fires strongly on four tokens, five top examples each, with the same weak background."""
    g = np.random.default_rng(0)
    n = n_top + n_sample
    val = np.concatenate([np.linspace(1.0, 0.6, n_top), np.linspace(0.1, 0.02, n_sample)])
    background = np.arange(100, 100 + n_sample)
    tok = np.stack(
        [np.r_[np.full(n_top, 6), background], np.r_[np.repeat([6, 7, 8, 9], n_top // 4), background]]
    )
    return {
        "val": np.stack([val, val]),
        "tok": tok,
        "rep": g.standard_normal((2, n, dims)).astype(np.float16),
        "valid": np.ones((2, n), dtype=bool),
    }


def test_a_unit_firing_strongly_on_one_token_scores_low_on_weighted_token_diversity():
    kept = digit_like_units()
    scores = example_scores(kept, np.zeros(32, dtype=np.float32))
    digit, four = scores["token_diversity_weighted"]
    assert digit < 1.1, "one clear token: near 1"
    assert 3.8 < four < 4.5, "four strong tokens: near 4"
    assert scores["token_diversity"][0] > 8, "counted alike, the weak background swamps it"


def test_evidence_weights_count_recurring_labels_fully_and_one_offs_by_strength():
    labels = np.array([[1, 1, 2, 3, 0]])
    valid = np.array([[True, True, True, True, False]])
    val = np.array([[4.0, 1.0, 2.0, 0.4, 9.0]])
    assert evidence_weights(labels, valid, val).tolist() == [[1.0, 1.0, 0.25, pytest.approx(0.01), 0.0]]
    assert evidence(valid, None).tolist() == [4.0]
    assert evidence(valid, np.array([[1.0, 1, 1, 1, 1]])).tolist() == [4.0]
    assert evidence(np.ones((1, 3), bool), np.array([[1.0, 0, 0]])).tolist() == [1.0]


def test_too_little_evidence_gives_no_score():
    labels = np.arange(10)[None]
    valid = np.ones((1, 10), dtype=bool)
    assert diversity(labels, valid) == pytest.approx([10.0])
    assert np.isnan(diversity(labels[:, :7], valid[:, :7])).all()
    one_strong = np.r_[1.0, np.full(9, 0.01)][None]
    assert np.isnan(diversity(labels, valid, one_strong)).all(), "one strong example is not enough"
