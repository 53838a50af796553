"""Activation maximization: a toy model whose answer is known, then real models (the tiny Llama and
its SAE) whose reported activations must reproduce on a fresh forward pass, the CLI and the results file."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from neurodash.errors import NeurodashError
from precompute.maximize import MaximizeConfig, optimize, pareto

# --- a toy model whose unit fires on one 3-token sequence -------------------------------------


class ToyObjective:
    """Random token embeddings; the unit is a width-3 causal convolution (then exp) whose filters are
    the (normalised) embeddings of ``TARGET``, so it fires hardest when a prompt ends with TARGET;
    the "language model" is a random bigram table."""

    VOCAB, D, TARGET = 50, 24, (7, 19, 33)

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.embedding = torch.randn(self.VOCAB, self.D, generator=g) / self.D**0.5
        self.filters = F.normalize(self.embedding[list(self.TARGET)], dim=1)  # [3, d]
        self.bigram = torch.randn(self.VOCAB, self.VOCAB, generator=g)
        self.allowed = torch.ones(self.VOCAB, dtype=torch.bool)
        self.allowed[0] = False  # "BOS"

    def _acts(self, embeds: torch.Tensor) -> torch.Tensor:
        padded = F.pad(embeds, (0, 0, 2, 0))  # two zero positions in front: causal
        pre = sum(padded[:, k : k + embeds.shape[1]] @ self.filters[k] for k in range(3))
        return torch.exp(2 * pre)

    def surrogate(self, embeds):
        return self._acts(embeds)[:, -1]

    def screen(self, tokens):
        return self._acts(self.embedding[tokens])[:, -1]

    def evaluate(self, tokens):
        first = torch.full((len(tokens), 1, self.VOCAB), -torch.log(torch.tensor(float(self.VOCAB))))
        logp = torch.cat([first, self.bigram[tokens[:, :-1]].log_softmax(-1)], dim=1)
        return self._acts(self.embedding[tokens]), logp


TOY = MaximizeConfig(length=5, steps=40, seed=0, penalties=(0.0, 1.0, 4.0), batch=48, shortlist=12, top_k=8)


def test_the_toy_unit_fires_hardest_on_its_sequence_by_brute_force():
    toy = ToyObjective()
    triples = torch.tensor(list(itertools.product(range(1, toy.VOCAB), repeat=3)))
    best = triples[toy.screen(triples).argmax()]
    assert tuple(best.tolist()) == ToyObjective.TARGET


def test_optimizer_finds_the_sequence_from_random_starts():
    toy = ToyObjective()
    frontier = optimize(toy, TOY)
    best = max(frontier, key=lambda p: p.activation)
    assert best.tokens[-3:] == ToyObjective.TARGET
    assert best.activation == pytest.approx(toy.screen(torch.tensor([best.tokens])).item(), rel=1e-5)


def test_optimizer_is_deterministic_for_a_seed():
    toy = ToyObjective()
    assert optimize(toy, TOY) == optimize(toy, TOY)
    other = optimize(toy, MaximizeConfig(**{**TOY.__dict__, "seed": 1}))
    assert other != optimize(toy, TOY)


def test_frontier_is_pareto_and_cross_entropy_is_the_models():
    toy = ToyObjective()
    frontier = optimize(toy, TOY, act_scale=500.0)  # penalty 4: a nat costs 200, a good share of the max
    assert len(frontier) >= 2
    for a, b in itertools.pairwise(frontier):
        assert a.cross_entropy < b.cross_entropy and a.activation < b.activation
    for p in frontier:  # CE by hand: uniform first token, then the bigram table
        tokens = list(p.tokens)
        nll = [torch.log(torch.tensor(float(toy.VOCAB))).item()]
        nll += [-toy.bigram[a].log_softmax(-1)[b].item() for a, b in itertools.pairwise(tokens)]
        assert p.cross_entropy == pytest.approx(sum(nll) / len(nll), rel=1e-5)
    # the fluency penalty matters: the most fluent prompt found is far more fluent than the most active
    assert frontier[0].cross_entropy < frontier[-1].cross_entropy - 0.5


def test_pareto_keeps_exactly_the_undominated():
    from precompute.maximize import Evaluated

    pts = [Evaluated((i,), a, c, (a,)) for i, (a, c) in enumerate([(1, 1), (2, 2), (1.5, 3), (3, 2.5), (0.5, 0.5)])]
    assert [p.tokens for p in pareto(pts)] == [(4,), (0,), (1,), (3,)]


@pytest.mark.parametrize(
    "kwargs, message",
    [({"length": 0}, "--length"), ({"length": 65}, "--length"), ({"steps": 0}, "--steps"),
     ({"penalties": ()}, "penalties"), ({"batch": 2}, "batch")],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(NeurodashError, match=message):
        MaximizeConfig(**kwargs)
