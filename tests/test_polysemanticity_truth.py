"""Ground truth for the polysemanticity scores: a trained toy model of superposition whose neurons'
number of represented features is known (``precompute.toy``), scored by the pipeline's own code."""

from __future__ import annotations

import numpy as np
import pytest

from precompute.toy import ToyConfig, ground_truth, spearman


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


@pytest.mark.parametrize("metric", ["context_diversity", "token_diversity", "polysemanticity"])
def test_scores_rank_neurons_by_their_true_number_of_features(toy, metric):
    truth, _, scores = toy
    assert spearman(scores[metric], truth) >= 0.7


@pytest.mark.parametrize("metric", ["context_diversity", "token_diversity", "polysemanticity"])
def test_monosemantic_controls_score_lowest(toy, metric):
    truth, control, scores = toy
    assert scores[metric][control].max() < scores[metric][truth >= 2].min()
    assert np.median(scores[metric][control]) < 2.0  # close to one thing


def test_bimodality_is_highest_for_the_sparse_monosemantic_controls(toy):
    truth, control, scores = toy
    assert spearman(scores["bimodality"], truth) <= -0.7
    assert scores["bimodality"][control].min() > np.median(scores["bimodality"][truth >= 2])
