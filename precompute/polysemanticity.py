"""Polysemanticity scores: how many distinct things one unit responds to.

Pure functions over numpy arrays, shared by the pipeline and the ground-truth tests, so that what
is validated on a toy model is exactly what runs on a real one.
"""

from __future__ import annotations

import numpy as np


def effective_number(weights: np.ndarray, axis: int = -1) -> np.ndarray:
    """exp(H(p)) of the distribution p proportional to non-negative ``weights`` along ``axis``.

    1 when all weight sits on one entry, n when it is spread evenly over n; 0 when there is none.
    """
    w = np.asarray(weights, dtype=np.float64)
    total = w.sum(axis=axis, keepdims=True)
    p = np.divide(w, total, out=np.zeros_like(w), where=total > 0)
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return np.where(total.squeeze(axis) > 0, np.exp(-plogp.sum(axis=axis)), 0.0)


def n_covering(weights: np.ndarray, fraction: float = 0.8, axis: int = -1) -> np.ndarray:
    """How many of the largest ``weights`` along ``axis`` it takes to reach ``fraction`` of their sum."""
    w = -np.sort(-np.asarray(weights, dtype=np.float64), axis=axis)
    cumulative = np.cumsum(w, axis=axis)
    total = np.take(cumulative, [-1], axis=axis)
    reached = cumulative >= fraction * total * (1 - 1e-12)
    return np.where(total.squeeze(axis) > 0, np.argmax(reached, axis=axis) + 1, 0)


def feature_mass(decoder: np.ndarray, feature_sums: np.ndarray) -> np.ndarray:
    """Each feature's share of each neuron's activation mass: ``[n_neurons, n_features]``.

    An SAE on a layer's neurons reconstructs neuron i as ``sum_f a_f W_dec[f, i]`` (plus a bias),
    with feature activations ``a_f >= 0``. Over the corpus, feature f contributes
    ``|W_dec[f, i]| * sum_t a_f(t)`` to neuron i's absolute activation mass; ``feature_sums`` is
    ``sum_t a_f(t)``. Rows are normalised to sum to 1 (a row of zeros stays zeros).
    """
    mass = np.abs(np.asarray(decoder, dtype=np.float64)).T * np.maximum(feature_sums, 0)[None, :]
    total = mass.sum(axis=1, keepdims=True)
    return np.divide(mass, total, out=np.zeros_like(mass), where=total > 0)
