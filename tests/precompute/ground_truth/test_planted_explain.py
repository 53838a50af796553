"""The explainer's controls on neurons planted with known triggers (precompute/ground_truth/planted.py):
it recovers each trigger and scores it at least 0.9 on held-out text, and an explanation shuffled to
another unit scores near 0."""

from __future__ import annotations

import numpy as np
import pytest

from neurodash.explain import Pattern, explain_unit, quoted_patterns, score
from precompute.ground_truth.planted import (
    AFTER,
    ALONE,
    EITHER,
    A,
    B,
    C,
    E,
    F,
    planted_model,
    planted_texts,
    run_corpus,
    vocab,
)


@pytest.fixture(scope="module")
def runs():
    model = planted_model()
    return run_corpus(model, 512, seed=1), run_corpus(model, 256, seed=2)


def test_the_model_fires_where_it_was_planted(runs):
    shown, _ = runs
    t, acts = shown.tokens, shown.acts
    after_a = np.zeros_like(t, dtype=bool)
    after_a[:, 1:] = t[:, :-1] == A
    np.testing.assert_allclose(acts[:, :, AFTER], ((t == B) & after_a).astype(float), atol=1e-6)
    np.testing.assert_allclose(acts[:, :, ALONE], (t == C).astype(float), atol=1e-6)
    assert acts[:, :, 3].max() < 1e-6


@pytest.mark.parametrize(
    ("neuron", "wanted", "text"),
    [
        (AFTER, Pattern(frozenset({B}), ((1, frozenset({A})),)), "`B` after `A`"),
        (ALONE, Pattern(frozenset({C})), "`C`"),
    ],
)
def test_the_explainer_recovers_the_trigger_and_scores_at_least_0_9(runs, neuron, wanted, text):
    texts = planted_texts(neuron, *runs)
    e = explain_unit(texts, vocab())
    first = e.patterns()[0]
    assert (first.triggers, first.before) == (wanted.triggers, wanted.before)
    assert e.text.startswith(text)
    assert e.correlation is not None and e.correlation >= 0.9
    assert e.precision is not None and e.precision >= 0.9
    assert e.recall is not None and e.recall >= 0.9
    assert e.n_scored == runs[1].tokens.size


def test_a_unit_with_two_triggers_gets_both(runs):
    e = explain_unit(planted_texts(EITHER, *runs), vocab())
    found = {(p.triggers, p.before) for p in e.patterns()}
    assert (frozenset({F}), ()) in found
    assert (frozenset({E}), ()) in found
    assert e.correlation is not None and e.correlation >= 0.9


def test_an_explanation_shuffled_to_another_unit_scores_near_0(runs):
    words = vocab()
    explanations = {n: explain_unit(planted_texts(n, *runs), words) for n in (AFTER, ALONE, EITHER)}
    for own in (AFTER, ALONE, EITHER):
        for other in (AFTER, ALONE, EITHER):
            if other == own:
                continue
            patterns = explanations[other].patterns()
            s = score(patterns, planted_texts(own, *runs), words)
            # disjoint triggers of these dense units (1 token in 15 each) correlate at -0.1 at most
            assert s.correlation is not None and abs(s.correlation) < 0.15, (own, other, s.correlation)


def test_a_text_explanation_is_simulated_by_the_tokens_it_quotes(runs):
    words = vocab()
    texts = planted_texts(ALONE, *runs)
    s = score(quoted_patterns('fires on the letter "c"', words), texts, words)
    assert s.correlation is not None and s.correlation >= 0.99
    nothing = score(quoted_patterns("fires on vowels", words), texts, words)
    assert nothing.correlation == 0.0


def test_the_most_wrong_held_out_tokens_are_kept(runs):
    words = vocab()
    texts = planted_texts(AFTER, *runs)
    s = score([Pattern(frozenset({B}), (), 1.0)], texts, words)  # B, context ignored
    assert s.most_wrong
    assert all(w.token == "B" and w.true == 0.0 and w.simulated == 1.0 for w in s.most_wrong)
    assert all(not w.context.endswith("A") for w in s.most_wrong)
