"""The model steps (precompute/n2g.py) on neurons planted with known triggers (ground_truth/planted.py):
truncation keeps exactly the planted context, replacement finds the token the unit needs and only
it, the activations read equal a plain forward of the same sequences, and the explainer with the
steps recovers each trigger and scores at least 0.9 (an explanation shuffled to another unit, near 0)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neurodash.explain import PATTERN_N2G, explain_unit, score
from precompute.ground_truth.planted import (
    AFTER,
    ALONE,
    BOS,
    EITHER,
    HOOK,
    A,
    B,
    C,
    D,
    E,
    F,
    PlantedReader,
    planted_model,
    planted_texts,
    run_corpus,
    vocab,
)
from precompute.n2g import Example, Truncation, gather_evidence, replace_step, run_last, strongest_examples


@pytest.fixture(scope="module")
def model():
    return planted_model()


@pytest.fixture(scope="module")
def runs(model):
    return run_corpus(model, 512, seed=1), run_corpus(model, 256, seed=2)


def evidence_of(model, runs, neuron):
    shown, _ = runs
    texts = planted_texts(neuron, *runs)
    full = {i: tuple(int(t) for t in seq) for i, seq in enumerate(shown.tokens)}
    reader = PlantedReader(model)
    examples = strongest_examples(texts, full, reader.bos)
    return texts, examples, gather_evidence(reader, examples)


def test_truncation_keeps_exactly_the_planted_context(model, runs):
    _, examples, found = evidence_of(model, runs, AFTER)
    assert len(found) == 3 and all(len(x.before) > 4 for x in examples)  # long contexts, cut to [BOS, A, B]
    for x, e in zip(examples, found):
        assert e is not None and e.trigger == B and e.context == (A,) and e.kept == pytest.approx(1.0)
        assert e.important == ((1, A),) and e.replaced == (pytest.approx(0.0, abs=1e-6),)
        assert e.activation == pytest.approx(1.0) and x.activation == pytest.approx(1.0)
    _, _, alone = evidence_of(model, runs, ALONE)
    assert all(e is not None and e.context == () and e.important == () for e in alone)  # [BOS, C]


def test_replacement_finds_the_needed_token_and_only_it(model):
    """Replacing each of the tokens before B in "E C F A B": only A matters."""
    reader = PlantedReader(model)
    x = Example(AFTER, 0, 5, (E, C, F, A), B, 1.0)
    (e,) = replace_step(reader, [x], [Truncation(4, 1.0, 1.0)])
    assert e is not None and e.important == ((1, A),)
    assert e.replaced == pytest.approx((0.0, 1.0, 1.0, 1.0), abs=1e-6)


def test_the_activations_read_equal_a_plain_forward_and_padding_changes_nothing(model):
    contexts = [[BOS, A, B], [BOS, C, C, A, B, D, E], [BOS, B], [BOS, C, E], [BOS, F, A, B, C, E, F, A, B]]
    units = [AFTER, EITHER, AFTER, ALONE, AFTER]
    read = run_last(PlantedReader(model), contexts, units)  # one batch, right padded
    for ctx, unit, got in zip(contexts, units, read):
        with torch.inference_mode():
            _, cache = model.run_with_cache(torch.tensor([ctx]))  # alone, no padding, the whole model
        assert got == pytest.approx(float(cache[HOOK][0, -1, unit]), abs=1e-6)
    assert read == pytest.approx([1.0, 1.0, 0.0, 0.0, 1.0], abs=1e-6)


@pytest.mark.parametrize(("neuron", "text"), [(AFTER, "`B` after `A`"), (ALONE, "`C`"), (EITHER, "`E`; `F`")])
def test_the_explainer_with_the_steps_recovers_the_trigger_and_scores_at_least_0_9(model, runs, neuron, text):
    texts, _, found = evidence_of(model, runs, neuron)
    e = explain_unit(texts, vocab(), [f for f in found if f is not None])
    assert e.explainer == PATTERN_N2G and e.text == text
    assert e.correlation is not None and e.correlation >= 0.9
    assert e.precision is not None and e.precision >= 0.9 and e.recall is not None and e.recall >= 0.9
    assert len(e.details["n2g"]) == 3


def test_an_explanation_with_the_steps_shuffled_to_another_unit_scores_near_0(model, runs):
    words = vocab()
    explained = {}
    for n in (AFTER, ALONE, EITHER):
        texts, _, found = evidence_of(model, runs, n)
        explained[n] = (texts, explain_unit(texts, words, [f for f in found if f is not None]))
    for own in explained:
        for other in explained:
            if other != own:
                s = score(explained[other][1].patterns(), explained[own][0], words)
                assert s.correlation is not None and abs(s.correlation) < 0.15, (own, other, s.correlation)


def test_a_unit_that_does_not_fire_has_no_evidence(model):
    reader = PlantedReader(model)
    assert gather_evidence(reader, [Example(3, 0, 2, (A,), B, 0.0)]) == [None]
    assert np.asarray(run_last(reader, [], [])).size == 0
