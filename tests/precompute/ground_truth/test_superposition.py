"""Ground truth for the polysemanticity scores: a trained toy model of superposition whose neurons'
number of represented features is known (``precompute.ground_truth.superposition``), scored by the pipeline's own code."""

from __future__ import annotations

import numpy as np
import pytest

from precompute.ground_truth.superposition import ToyConfig, ground_truth, spearman


@pytest.fixture(scope="module")
def toy():
    units, scores = ground_truth(ToyConfig())
    truth = np.array([u.truth for u in units])
    control = np.array([u.control for u in units])
    return truth, control, scores


def test_the_toy_has_monosemantic_and_polysemantic_neurons(toy):
    truth, control, _ = toy
    assert control.sum() >= 4 and (truth[control] == 1).all()
    assert (truth >= 3).sum() >= 8 and truth.max() >= 4


@pytest.mark.parametrize(
    "metric",
    ["sae_features", "sae_features_oracle", "context_diversity", "token_diversity", "polysemanticity"],
)
def test_scores_rank_neurons_by_their_true_number_of_features(toy, metric):
    truth, _, scores = toy
    assert spearman(scores[metric], truth) >= 0.7


@pytest.mark.parametrize(
    "metric", ["sae_features_oracle", "context_diversity", "token_diversity", "polysemanticity"]
)
def test_monosemantic_controls_score_lowest(toy, metric):
    truth, control, scores = toy
    assert scores[metric][control].max() < scores[metric][truth >= 2].min()
    assert np.median(scores[metric][control]) < 2.0  # close to one thing


def test_bimodality_is_highest_for_the_sparse_monosemantic_controls(toy):
    truth, control, scores = toy
    assert spearman(scores["bimodality"], truth) <= -0.7
    assert scores["bimodality"][control].min() > np.median(scores["bimodality"][truth >= 2])


def test_a_trained_sae_ranks_controls_below_polysemantic_neurons_but_splits_some_features(toy):
    """The trained SAE splits a feature into several latents now and then (the toy's ReLU thresholds
    bend its path through the hidden space), so a control can score above the least polysemantic
    neuron; the oracle dictionary above shows the formula itself puts every control at exactly 1."""
    truth, control, scores = toy
    trained, oracle = scores["sae_features"], scores["sae_features_oracle"]
    assert (trained[control][:, None] < trained[truth >= 2][None, :]).mean() >= 0.9
    assert np.median(trained[control]) < 2.0
    assert oracle[control] == pytest.approx(1.0)
