"""Polysemanticity score functions against hand-computed answers."""

from __future__ import annotations

import numpy as np
import pytest

from precompute.polysemanticity import co_activation, effective_number, feature_mass, n_covering


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


def test_feature_mass_follows_the_features_that_drive_the_neuron_where_it_fires():
    decoder = np.array([[1.0, 0.0], [-1.0, 2.0], [0.5, 0.5]])  # 3 features writing to 2 neurons
    neurons = np.array([[2.0, 0.0], [0.0, 1.0], [-1.0, 3.0]])  # 3 tokens
    features = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    c = co_activation(neurons, features)
    assert c == pytest.approx(np.array([[4.0, 0, 0], [0, 1, 3]]))
    mass = feature_mass(decoder, c)  # neuron 1: feature 1 gives 2 * 1, feature 2 gives 0.5 * 3
    assert mass == pytest.approx(np.array([[1.0, 0, 0], [0, 2 / 3.5, 1.5 / 3.5]]))
    assert feature_mass(-decoder, c)[0] == pytest.approx([0, 0, 0]), "only features pushing it up count"
