"""Polysemanticity score functions against hand-computed answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from precompute.pipeline.polysemanticity import attributed_mass, effective_number, feature_shares, n_covering


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
