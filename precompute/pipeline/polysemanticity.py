"""Polysemanticity scores: how many distinct things one unit responds to.

Pure functions over numpy arrays (torch tensors for those that run on every batch), shared by the
pipeline and the ground-truth tests, so that what is validated on a toy model is exactly what runs
on a real one.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from precompute.pipeline.accumulate import Examples


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


def attributed_mass(neurons: Tensor, features: Tensor, decoder: Tensor, strong: bool = False) -> Tensor:
    """How much of each neuron's activation each SAE feature accounts for, summed over tokens:
    ``[n_neurons, n_features]``.

    An SAE on a layer's neurons reconstructs neuron i at token t as ``sum_f a_f(t) W_dec[f, i]``
    (plus a bias). Each token's positive activation ``x_i(t)`` is split among the features active
    there in proportion to what each writes to the neuron, ``a_f(t) W_dec[f, i]``; features that
    push the neuron down get no share, and a token where no active feature pushes it up leaves its
    activation unattributed. Tokens ``[t, n_neurons]`` and ``[t, n_features]``; ``decoder`` is
    ``[n_features, n_neurons]``. Over many batches, sum ``attribution_sums`` and multiply once.

    ``strong``: each token's share counts its activation times the activation again, so that the
    tokens where the neuron fires strongly dominate (what drives it when it fires, rather than its
    weak firing on many tokens).
    """
    up = decoder.clamp(min=0)
    return mass_from_sums(attribution_sums(neurons, features, up, strong), up)


def mass_from_sums(sums: Tensor, up: Tensor) -> Tensor:
    """``attributed_mass`` from its ``attribution_sums`` (added over batches) and ``up``."""
    return (up * sums).T


def attribution_sums(neurons: Tensor, features: Tensor, up: Tensor, strong: bool = False) -> Tensor:
    """The part of ``attributed_mass`` that sums over tokens, ``[n_features, n_neurons]``:
    ``sum_t a_f(t) x_i(t)^+ / sum_g a_g(t) up[g, i]`` (times ``x_i(t)^+`` again if ``strong``),
    ``up`` being the decoder's positive part. Times ``up`` it is the mass; two matrix products per batch."""
    written = features @ up  # [t, neurons]: what the active features write to each neuron
    x = neurons.clamp(min=0)
    ratio = torch.where(written > 0, (x * x if strong else x) / written.clamp(min=1e-30), 0.0)
    return features.T @ ratio


def feature_shares(mass: np.ndarray) -> np.ndarray:
    """Rows of ``attributed_mass`` normalised to sum to 1: each feature's share of each neuron's
    activation mass over the corpus (a row of zeros stays zeros)."""
    mass = np.asarray(mass, dtype=np.float64)
    total = mass.sum(axis=1, keepdims=True)
    return np.divide(mass, total, out=np.zeros_like(mass), where=total > 0)


# --- diversity of a unit's kept examples -----------------------------------------------------
MIN_EXAMPLES = 8  # fewer kept examples than this: too little evidence, the diversity scores are NaN
CLUSTER_COSINE = 0.5  # an example joins a cluster whose leader is at least this similar


def projection(d_in: int, dims: int, seed: int = 0) -> np.ndarray:
    """A fixed Gaussian random projection ``[d_in, dims]`` (Johnson-Lindenstrauss): cosines survive it."""
    g = np.random.default_rng(np.random.SeedSequence([seed, d_in, dims]))
    return (g.standard_normal((d_in, dims)) / np.sqrt(dims)).astype(np.float32)


def cluster_bytes(n_units: int, n_examples: int) -> int:
    """The memory ``leader_clusters`` takes for ``n_units`` units of ``n_examples`` examples: their
    cosines (float32), compared (bool), ``[units, n, n]`` each."""
    return n_units * n_examples * n_examples * (4 + 1)


def leader_clusters(reps: np.ndarray, valid: np.ndarray, threshold: float = CLUSTER_COSINE) -> np.ndarray:
    """Cluster each unit's examples by cosine similarity: ``[units, n]`` cluster ids (-1 where invalid).

    ``reps`` is ``[units, n, d]``, examples in decreasing activation. Leader clustering, vectorised
    across units: each example joins the first earlier leader whose cosine with it is at least
    ``threshold``, or else leads a new cluster. Clusters are numbered in the order their leaders
    appear, so a cluster's leader is its strongest example; no cluster is wider than the threshold
    around its leader (unlike connected components, similarities do not chain).
    """
    r = np.asarray(reps, dtype=np.float32)
    r = r / np.maximum(np.linalg.norm(r, axis=-1, keepdims=True), 1e-12)
    cos = r @ r.transpose(0, 2, 1)  # [units, n, n]
    n_units, n = valid.shape
    labels = np.full((n_units, n), -1, dtype=np.int32)
    leader = np.zeros((n_units, n), dtype=bool)
    n_clusters = np.zeros(n_units, dtype=np.int32)
    rows = np.arange(n_units)
    for j in range(n):
        close = leader[:, :j] & (cos[:, j, :j] >= threshold)
        joins = close.any(1)
        first = close.argmax(1) if j else np.zeros(n_units, dtype=np.int64)
        labels[:, j] = np.where(valid[:, j], np.where(joins, labels[rows, first], n_clusters), -1)
        leader[:, j] = valid[:, j] & ~joins
        n_clusters += leader[:, j]
    return labels


def group_sums(labels: np.ndarray, valid: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Per row, the total ``weights`` (1 each if None) of each group of equal ``labels`` among ``valid``
    entries: ``[rows, n]``, zero-padded."""
    n_rows, n = labels.shape
    big = np.iinfo(np.int64).max
    order = np.argsort(np.where(valid, labels.astype(np.int64), big), axis=1, kind="stable")
    s = np.take_along_axis(np.where(valid, labels.astype(np.int64), big), order, 1)
    w = np.ones(labels.shape) if weights is None else np.asarray(weights, dtype=np.float64)
    w = np.take_along_axis(w, order, 1)
    ok = s != big
    new = np.ones_like(ok)
    new[:, 1:] = s[:, 1:] != s[:, :-1]
    group = np.cumsum(new & ok, axis=1) - 1
    r, c = np.nonzero(ok)
    sums = np.bincount(r * n + group[r, c], weights=w[r, c], minlength=n_rows * n)  # in order, as add.at
    return sums.reshape(n_rows, n).astype(np.float64, copy=False)  # bincount of nothing: int64


def evidence(valid: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Kish's effective sample size of each row's valid entries, (sum w)^2 / sum w^2: their count when
    unweighted; about the number of the strongest when a few outweigh the rest."""
    w = np.where(valid, 1.0 if weights is None else np.clip(weights, 0, None), 0.0)
    return np.divide(w.sum(1) ** 2, (w**2).sum(1), out=np.zeros(len(w)), where=(w**2).sum(1) > 0)


def diversity(
    labels: np.ndarray,
    valid: np.ndarray,
    weights: np.ndarray | None = None,
    min_examples: int = MIN_EXAMPLES,
) -> np.ndarray:
    """exp(H) of the distribution of ``labels`` (cluster ids, token ids) over each row's valid entries,
    each entry counting its ``weights`` (1 if None); NaN for rows whose ``evidence`` is below
    ``min_examples``."""
    w = None if weights is None else np.where(valid, np.clip(weights, 0, None), 0.0)
    eff = effective_number(group_sums(labels, valid, w), axis=1)
    return np.where(evidence(valid, w) >= min_examples, eff, np.nan)


def evidence_weights(labels: np.ndarray, valid: np.ndarray, val: np.ndarray) -> np.ndarray:
    """How much each kept example counts towards a weighted diversity score: 1 when its label (token,
    context cluster) recurs among the unit's valid examples, else the square of its activation
    relative to the unit's strongest example (a one-off at 10% of the max counts 1%).

    A response seen once counts as much as it is strong: the weak one-off firing of a dense unit (a
    SiLU neuron is slightly positive on half the tokens) is background, not one more thing it
    responds to, while a response it keeps giving, weak or not, is.
    """
    same = (labels[:, :, None] == labels[:, None, :]) & valid[:, None, :]
    recurs = same.sum(2) >= 2
    top = np.where(valid, val, 0.0).max(1, keepdims=True)
    relative = np.divide(val, top, out=np.zeros(val.shape), where=top > 0)
    return np.where(valid, np.where(recurs, 1.0, np.clip(relative, 0.0, 1.0) ** 2), 0.0)


def bimodality(skew: np.ndarray, kurtosis: np.ndarray) -> np.ndarray:
    """Sarle's bimodality coefficient (skew² + 1) / kurtosis (Pearson kurtosis, 3 for a Gaussian).

    5/9 for a uniform distribution; above it hints at two or more modes, 1 for two point masses.
    NaN where the kurtosis is not positive (a constant unit).
    """
    k = np.asarray(kurtosis, dtype=np.float64)
    return np.divide(np.square(skew) + 1.0, k, out=np.full(k.shape, np.nan), where=k > 0)


def combined(*effective_numbers: np.ndarray) -> np.ndarray:
    """The geometric mean of the effective numbers given (NaN ones left out; NaN if none is there)."""
    x = np.stack([np.asarray(e, dtype=np.float64) for e in effective_numbers])
    ok = np.isfinite(x) & (x > 0)
    n = ok.sum(0)
    logs = np.where(ok, np.log(np.where(ok, x, 1.0)), 0.0).sum(0)
    return np.where(n > 0, np.exp(logs / np.maximum(n, 1)), np.nan)


def kept_examples(top: Examples, sample: Examples, dims: int) -> dict[str, np.ndarray]:
    """Each unit's top and quantile-sample examples where it fires, strongest first: ``[units, n]`` arrays
    ``val``, ``seq``, ``pos``, ``tok`` and ``rep`` (``[units, n, dims]``), and ``valid``.

    ``top`` and ``sample`` are the accumulator's slots (``val`` 0 or less marks an empty one); a
    sampled token that is also a top example is kept once (invalid in the sample).
    """
    (top_tok, top_rep), (sample_tok, sample_rep) = top.context(dims), sample.context(dims)
    both = {
        "val": np.concatenate([top.val, sample.val], axis=1),
        "seq": np.concatenate([top.seq, sample.seq], axis=1),
        "pos": np.concatenate([top.pos, sample.pos], axis=1),
        "tok": np.concatenate([top_tok, sample_tok], axis=1),
        "rep": np.concatenate([top_rep, sample_rep], axis=1),
    }
    valid = both["val"] > 0
    k = top.val.shape[1]
    in_top = (sample.seq[:, :, None] == top.seq[:, None, :]) & (sample.pos[:, :, None] == top.pos[:, None, :])
    valid[:, k:] &= ~(in_top & (top.val[:, None, :] > 0)).any(2)  # a token in both counts once
    order = np.argsort(-np.where(valid, both["val"], -np.inf), axis=1, kind="stable")
    units = np.arange(len(order))[:, None]  # whole slots copied at once (6x faster than take_along_axis)
    return {k: v[units, order] for k, v in both.items()} | {"valid": valid[units, order]}


def example_scores(
    kept: dict[str, np.ndarray], rep_mean: np.ndarray, threshold: float = CLUSTER_COSINE
) -> dict[str, np.ndarray]:
    """Context and token diversity of each unit's kept examples, and each example's cluster.

    ``context_diversity`` and ``token_diversity`` count every example the same (NaN under
    ``MIN_EXAMPLES`` of them); their ``_weighted`` versions count each by its ``evidence_weights``
    (NaN for both where the weighted ``evidence`` of either is under ``MIN_EXAMPLES``).
    Representations are centred on ``rep_mean`` (their mean over the corpus) before clustering, so
    that what all tokens share does not make every context look alike.
    """
    valid, val, tok = kept["valid"], kept["val"], kept["tok"]
    cluster = leader_clusters(kept["rep"].astype(np.float32) - rep_mean, valid, threshold)
    by_context, by_token = evidence_weights(cluster, valid, val), evidence_weights(tok, valid, val)
    enough = np.minimum(evidence(valid, by_context), evidence(valid, by_token)) >= MIN_EXAMPLES
    return {
        "context_diversity": diversity(cluster, valid),
        "token_diversity": diversity(tok, valid),
        "context_diversity_weighted": np.where(
            enough, diversity(cluster, valid, by_context, min_examples=0), np.nan
        ),
        "token_diversity_weighted": np.where(enough, diversity(tok, valid, by_token, min_examples=0), np.nan),
        "cluster": cluster,
    }
