"""A toy model of superposition whose neurons' polysemanticity is known: the ground truth for the scores.

As in Anthropic's *Toy Models of Superposition* (privileged-basis variant): sparse input features
``x`` (each present with probability ``1 - sparsity``, then uniform in [0, 1]), fewer ReLU neurons
than features, ``h = ReLU(W1 x + b1)``, ``y = ReLU(W2 h + b2)``, trained to reconstruct ``x``
under decaying feature importance. Several instances (one per sparsity) train at once.

Truth: a neuron represents feature f when f alone (``x_f = 1``) turns it on, to at least
``TRUTH_FRACTION`` of the strongest such single-feature response. Each neuron is wired to a
known set of features (1 to 18; training keeps some) and trained; the neurons wired to a single feature are the
monosemantic controls.

The toy is mapped to what the pipeline's scores consume and scored by the very same code:
tokens are grouped into sequences and streamed through ``UnitAccumulator``; a token's id is its
strongest input feature (``n_features`` when none is present); the representation at a token is
what the layer reads there, the input ``x`` (randomly projected to 32 dimensions as in the
pipeline); the SAE is the project's own TopK trainer, on the hidden states ``h``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from neurodash.config import AccumulatorConfig
from precompute.pipeline.accumulate import UnitAccumulator
from precompute.pipeline.polysemanticity import (
    MIN_EXAMPLES,
    attributed_mass,
    bimodality,
    combined,
    effective_number,
    example_scores,
    feature_shares,
    kept_examples,
    n_covering,
    projection,
)

TRUTH_FRACTION = 0.2
MAIN_METRICS = ("sae_features", "context_diversity", "token_diversity", "polysemanticity")


@dataclass(frozen=True)
class ToyConfig:
    n_features: int = 40
    set_sizes: tuple[int, ...] = (1, 1, 2, 3, 5, 7, 9, 12, 15, 18)  # features wired to each neuron
    sparsities: tuple[float, ...] = (0.97, 0.98, 0.99)  # one instance each
    importance_decay: float = 0.97
    steps: int = 2000
    batch: int = 256
    lr: float = 1e-2
    tokens: int = 65_536  # the "corpus" each instance's neurons are scored on
    seq_len: int = 16
    context_dims: int = 32  # the representation (the input x) is projected as in the pipeline
    sae_features: int = 60
    sae_k: int = 2
    sae_tokens: int = 400_000
    seed: int = 0


@dataclass(frozen=True)
class ToyUnit:
    instance: int
    neuron: int
    control: bool  # wired to exactly one feature by construction
    truth: int


def sample_features(n: int, n_features: int, sparsity: float, g: torch.Generator) -> torch.Tensor:
    present = torch.rand(n, n_features, generator=g) >= sparsity
    return present * torch.rand(n, n_features, generator=g)


def wiring(cfg: ToyConfig, g: torch.Generator) -> torch.Tensor:
    """``[instances, hidden, features]``: which features each neuron may read (its set, by construction)."""
    mask = torch.zeros(len(cfg.sparsities), len(cfg.set_sizes), cfg.n_features)
    for i in range(len(cfg.sparsities)):
        for n, size in enumerate(cfg.set_sizes):
            mask[i, n, torch.randperm(cfg.n_features, generator=g)[:size]] = 1.0
    return mask


def train_toy(cfg: ToyConfig) -> list[dict[str, torch.Tensor]]:
    """Train one instance per sparsity (batched) to reconstruct x through its ReLU neurons; each
    neuron reads only its wired features, with non-negative weights and a non-positive bias.
    Returns each instance's W1 ``[hidden, features]``, b1 and wiring mask."""
    g = torch.Generator().manual_seed(cfg.seed)
    mask = wiring(cfg, g)
    k, h, f = mask.shape
    w1 = (torch.randn(k, h, f, generator=g) * 0.1).requires_grad_()
    b1 = torch.full((k, h, 1), -2.0, requires_grad=True)
    w2 = (torch.randn(k, f, h, generator=g) * 0.1).requires_grad_()
    b2 = torch.zeros(k, f, 1, requires_grad=True)
    importance = cfg.importance_decay ** torch.arange(f, dtype=torch.float32)
    opt = torch.optim.Adam([w1, b1, w2, b2], lr=cfg.lr)
    sparsity = torch.tensor(cfg.sparsities)[:, None, None]

    def params() -> tuple[torch.Tensor, torch.Tensor]:
        return torch.nn.functional.softplus(w1) * mask, -torch.nn.functional.softplus(b1)

    for _ in range(cfg.steps):
        x = (torch.rand(k, f, cfg.batch, generator=g) >= sparsity) * torch.rand(k, f, cfg.batch, generator=g)
        enc, bias = params()
        y = torch.relu(w2 @ torch.relu(enc @ x + bias) + b2)
        loss = (importance[None, :, None] * (y - x) ** 2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    enc, bias = params()
    return [{"W1": enc[i].detach(), "b1": bias[i, :, 0].detach(), "mask": mask[i]} for i in range(k)]


def true_counts(w1: torch.Tensor, b1: torch.Tensor) -> np.ndarray:
    """Per neuron, how many features alone turn it on to at least TRUTH_FRACTION of its strongest."""
    single = torch.relu(w1 + b1[:, None])  # [hidden, features]: response to x_f = 1 alone
    strongest = single.max(1, keepdim=True).values
    return ((single > 0) & (single >= TRUTH_FRACTION * strongest)).sum(1).numpy()


def score_instance(
    model: dict[str, torch.Tensor], cfg: ToyConfig, sparsity: float, seed: int
) -> dict[str, np.ndarray]:
    """Every score of every neuron of one instance, from its activations over a corpus of toy tokens."""
    g = torch.Generator().manual_seed(seed)
    w1, b1 = model["W1"], model["b1"]
    n_seq = cfg.tokens // cfg.seq_len
    acc = UnitAccumulator(w1.shape[0], cfg.seq_len, AccumulatorConfig(window=8, window_before=4))
    project = torch.from_numpy(projection(cfg.n_features, cfg.context_dims, cfg.seed))
    rep_sum = torch.zeros(cfg.context_dims, dtype=torch.float64)
    for start in range(0, n_seq, 256):
        b = min(256, n_seq - start)
        x = sample_features(b * cfg.seq_len, cfg.n_features, sparsity, g)
        hidden = torch.relu(x @ w1.T + b1)
        strongest = torch.where(x.amax(1) > 0, x.argmax(1), cfg.n_features)
        rep = x @ project
        rep_sum += rep.sum(0).double()
        acts = hidden.view(b, cfg.seq_len, -1)
        at_token = {"rep": rep.view(b, cfg.seq_len, -1), "tok": strongest.view(b, cfg.seq_len)}
        acc.update(acts.clone(), torch.arange(start, start + b), ctx=cfg.seq_len, at_token=at_token)
    res = acc.result()
    kept = kept_examples(res.top, res.sample, cfg.context_dims)
    ex = example_scores(kept, (rep_sum / (n_seq * cfg.seq_len)).float().numpy())
    sae = _sae_scores(w1, b1, cfg, sparsity, seed)
    return {
        **sae,
        "context_diversity": ex["context_diversity"],
        "token_diversity": ex["token_diversity"],
        "bimodality": bimodality(res.moments.skew, res.moments.kurtosis),
        "context_diversity_weighted": ex["context_diversity_weighted"],
        "token_diversity_weighted": ex["token_diversity_weighted"],
        "polysemanticity": combined(ex["context_diversity"], ex["token_diversity"]),  # as the pipeline's
        "polysemanticity_weighted": combined(
            ex["context_diversity_weighted"], ex["token_diversity_weighted"]
        ),
        "polysemanticity_with_sae": combined(
            ex["context_diversity"], ex["token_diversity"], sae["sae_features"]
        ),
        "n_examples": kept["valid"].sum(1),
    }


def _sae_scores(w1: torch.Tensor, b1: torch.Tensor, cfg: ToyConfig, sparsity: float, seed: int) -> dict:
    """Each neuron's SAE decomposition scores (``attributed_mass``), from the project's TopK SAE trained
    on the hidden states, and from the oracle dictionary a perfect SAE would hold: one latent per
    true feature, active as much as the feature, decoding to the neurons' response to it alone."""
    from precompute.sae import SAEHyperparams, train_on_activations

    g = torch.Generator().manual_seed(seed + 1)
    hp = SAEHyperparams(d_sae=cfg.sae_features, k=cfg.sae_k, batch_tokens=512, dead_after=20_000, seed=seed)

    def batches():
        while True:
            yield torch.relu(sample_features(hp.batch_tokens, cfg.n_features, sparsity, g) @ w1.T + b1)

    sae = train_on_activations(batches(), d_in=w1.shape[0], tokens=cfg.sae_tokens, hp=hp)
    x = sample_features(cfg.tokens, cfg.n_features, sparsity, g)
    hidden = torch.relu(x @ w1.T + b1)
    with torch.inference_mode():
        trained = attributed_mass(hidden, sae.encode(hidden), sae.decoder_directions())
        strong = attributed_mass(hidden, sae.encode(hidden), sae.decoder_directions(), strong=True)
    oracle = attributed_mass(hidden, x, torch.relu(w1 + b1[:, None]).T)
    shares, oracle_shares = feature_shares(trained.numpy()), feature_shares(oracle.numpy())
    return {
        "sae_features": effective_number(shares, axis=1),
        "sae_features_strong": effective_number(feature_shares(strong.numpy()), axis=1),
        "sae_features_80": n_covering(shares, 0.8, axis=1),
        "sae_features_oracle": effective_number(oracle_shares, axis=1),
    }


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    import pandas as pd

    return float(pd.Series(a).rank().corr(pd.Series(b).rank()))


@contextlib.contextmanager
def _one_thread():
    """Tensors this small run faster on one thread (and far faster on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def ground_truth(cfg: ToyConfig = ToyConfig()) -> tuple[list[ToyUnit], dict[str, np.ndarray]]:
    """Train the toy, score every neuron; the units that fire enough to be scored, and their scores."""
    with _one_thread():
        return _ground_truth(cfg)


def _ground_truth(cfg: ToyConfig) -> tuple[list[ToyUnit], dict[str, np.ndarray]]:
    units: list[ToyUnit] = []
    scores: dict[str, list] = {}
    for i, (model, sparsity) in enumerate(zip(train_toy(cfg), cfg.sparsities)):
        truth = true_counts(model["W1"], model["b1"])
        got = score_instance(model, cfg, sparsity, cfg.seed + 100 * (i + 1))
        for n in range(len(truth)):
            if truth[n] == 0 or got["n_examples"][n] < MIN_EXAMPLES:
                continue  # dead: nothing to score
            units.append(ToyUnit(i, n, cfg.set_sizes[n] == 1, int(truth[n])))
            for name, v in got.items():
                scores.setdefault(name, []).append(v[n])
    return units, {k: np.asarray(v, dtype=np.float64) for k, v in scores.items()}
