"""Activation maximization: a toy model whose answer is known, then real models (the tiny Llama and
its SAE) whose reported activations must reproduce on a fresh forward pass. The CLI and the results
file: tests/cli/test_maximize_cli.py."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
import torch.nn.functional as F
from tiny_llama import strongest_unit

from neurodash.errors import NeurodashError
from precompute.live.maximize import MaximizeConfig, optimize, pareto

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
    from precompute.live.maximize import Evaluated

    pts = [
        Evaluated((i,), a, c, (a,))
        for i, (a, c) in enumerate([(1, 1), (2, 2), (1.5, 3), (3, 2.5), (0.5, 0.5)])
    ]
    assert [p.tokens for p in pareto(pts)] == [(4,), (0,), (1,), (3,)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"length": 0}, "--length"),
        ({"length": 65}, "--length"),
        ({"steps": 0}, "--steps"),
        ({"penalties": ()}, "penalties"),
        ({"batch": 2}, "batch"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(NeurodashError, match=message):
        MaximizeConfig(**kwargs)


# --- real models: the tiny Llama of conftest, a neuron and an SAE feature ---------------------

SMALL = MaximizeConfig(length=6, steps=4, seed=0, penalties=(0.0, 1.0, 4.0), batch=24, shortlist=6, top_k=16)
HOOK = "blocks.1.mlp.hook_post"


def hf_forward(model_dir, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Straight from Hugging Face: (blocks.1.mlp.hook_post [pos, d_mlp], logits [pos, vocab]) for ``ids``."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    kept = {}
    model.model.layers[1].mlp.down_proj.register_forward_pre_hook(lambda m, args: kept.update(x=args[0]))
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    return kept["x"][0], logits


def check_against_hf(frontier, model_dir, bos: int, read) -> None:
    assert frontier.prompts
    for p in frontier.prompts:
        hook_post, logits = hf_forward(model_dir, [bos, *p.token_ids])
        acts = read(hook_post)[1:]
        assert p.activation == pytest.approx(acts[-1].item(), rel=1e-4, abs=1e-5)
        assert torch.allclose(torch.tensor(p.acts), acts, rtol=1e-4, atol=1e-5)
        logp = logits[:-1].log_softmax(-1)
        ce = -logp[torch.arange(len(p.token_ids)), torch.tensor(p.token_ids)].mean().item()
        assert p.cross_entropy == pytest.approx(ce, rel=1e-4)


def test_a_neurons_found_activations_reproduce_on_a_fresh_forward_pass(tiny_store, tiny_model_dir):
    from precompute.live.maximize import maximize

    ref = strongest_unit(tiny_store, "L1.mlp")
    frontier = maximize(tiny_store, ref, config=SMALL)
    assert (
        str(frontier.ref) == ref
        and frontier.length == 6
        and all(len(p.token_ids) == 6 for p in frontier.prompts)
    )
    bos = json.loads((tiny_model_dir / "config.json").read_text())["bos_token_id"]
    unit = frontier.ref.unit
    check_against_hf(frontier, tiny_model_dir, bos, lambda h: h[:, unit])
    assert frontier.best.activation > 0


def test_an_sae_features_found_activations_reproduce_on_a_fresh_forward_pass(tiny_store, tiny_model_dir):
    from neurodash.storage import Store
    from precompute.live.maximize import maximize
    from precompute.sae import load_sae

    ref = strongest_unit(tiny_store, "L1.sae")
    frontier = maximize(tiny_store, ref, config=SMALL)
    with Store(tiny_store) as store:
        sae = load_sae(store.source("L1.sae").config["saes"][0])
    bos = json.loads((tiny_model_dir / "config.json").read_text())["bos_token_id"]
    check_against_hf(frontier, tiny_model_dir, bos, lambda h: sae.encode(h[None])[0, :, frontier.ref.unit])


def test_same_seed_same_frontier_and_corpus_seeds_start_it(tiny_store):
    from neurodash.storage import Store
    from precompute.live.maximize import corpus_seeds, maximize

    ref = strongest_unit(tiny_store, "L1.mlp")
    a, b = maximize(tiny_store, ref, config=SMALL), maximize(tiny_store, ref, config=SMALL)
    assert a.prompts == b.prompts
    c = maximize(tiny_store, ref, config=MaximizeConfig(**{**SMALL.__dict__, "seed": 3}))
    assert c.prompts != a.prompts
    with Store(tiny_store) as store:
        top = store.examples(a.ref, ["top"])[0]
        seeds = corpus_seeds(store, a.ref, 6, 2, bos=1)
        assert seeds[0] == list(top.token_ids[: top.pos - top.start + 1])[-6:]
        assert a.corpus_max == pytest.approx(store.unit_stats(a.ref).max_act)
