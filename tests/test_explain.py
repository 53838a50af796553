"""The pattern explainer's pieces on hand-made windows, and the explanations file."""

from __future__ import annotations

import numpy as np

from neurodash.explain import (
    PATTERN,
    Evidence,
    Explanation,
    Pattern,
    Window,
    describe,
    explain_patterns,
    simulate,
    split_windows,
)
from neurodash.storage.explanations import Explanations
from neurodash.units import UnitRef

VOCAB = ["<bos>", "A", "B", "C", " import", "\n"]
REF = UnitRef("L0.mlp", 3)


def test_a_pattern_looks_back_into_the_context_before_the_window():
    w = Window(0, 3, context=(1,), token_ids=(2, 2, 1, 2), acts=(0, 0, 0, 0))
    p = Pattern(frozenset({2}), ((1, frozenset({1})),))
    assert simulate([p], w).tolist() == [1.0, 0.0, 0.0, 1.0]
    anything_after_a = Pattern(frozenset(), ((1, frozenset({1})),), value=0.5)
    assert simulate([anything_after_a], w).tolist() == [0.5, 0.0, 0.0, 0.5]


def test_the_explainer_prefers_the_trigger_alone_when_it_is_precise_enough():
    shown = [Window(i, 0, (), (3, 4, 1), (0.0, 1.0, 0.0), rank=2 * i) for i in range(4)]
    patterns = explain_patterns(shown, 1.0)
    assert [(p.triggers, p.before) for p in patterns] == [(frozenset({4}), ())]
    assert describe(patterns, VOCAB) == "` import`"


def test_describe_writes_distances_and_newlines():
    p = Pattern(frozenset({5}), ((2, frozenset({1})),))
    assert describe([p, Pattern(frozenset(), ((1, frozenset({3})),))], VOCAB) == (
        "`\\n` 2 tokens after `A`; the token after `C`"
    )
    assert describe([], VOCAB).startswith("no pattern")


def test_split_shows_even_top_ranks_and_holds_out_the_rest_without_their_overlap():
    windows = [
        Window(7, 0, (), (1, 2, 3, 4), (0, 1, 0, 0), "top", 0),
        Window(7, 2, (1, 2), (3, 4, 5, 1), (0, 0, 1, 0), "top", 1),  # overlaps the shown one on 2, 3
        Window(9, 0, (), (1, 1), (0, 0), "q0.20", 0),
    ]
    texts = split_windows(REF, 1.0, windows)
    assert [w.rank for w in texts.shown] == [0]
    held = [(w.seq_id, w.start, w.context, w.token_ids) for w in texts.held_out]
    assert held == [(7, 4, (2, 3, 4), (5, 1)), (9, 0, (), (1, 1))]


def test_explanations_are_saved_replaced_and_read_back(tmp_path):
    file = Explanations.beside(tmp_path / "demo.duckdb")
    assert file.path.name == "demo.explanations.duckdb"
    assert file.of_unit(REF) == [] and file.explained(PATTERN) == set()
    details = {"patterns": [Pattern(frozenset({2})).to_json()], "most_wrong": []}
    file.save([Explanation(REF, PATTERN, "`B`", 0.5, None, 0.25, 10, details)])
    file.save([Explanation(REF, PATTERN, "`C`", 0.75, 1.0, 0.5, 12, details)])
    file.save([Explanation(REF, "llm:x", "letters", float(np.float64(0.1)), None, None, 12, {})])
    got = file.of_unit(REF)
    assert [(e.explainer, e.text, e.correlation) for e in got] == [
        (PATTERN, "`C`", 0.75),
        ("llm:x", "letters", 0.1),
    ]
    assert got[0].patterns() == [Pattern(frozenset({2}))]
    assert file.explained(PATTERN) == {REF}
    assert len(file.all()) == 2


def test_the_model_steps_evidence_makes_a_needed_token_part_of_the_pattern():
    """Every shown `B` follows `A`: alone, the simplest pattern (`B`) wins the tie; the evidence that
    replacing `A` silences the unit adds a quiet row for `B` without `A`, and `B` after `A` wins."""
    shown = [Window(i, 0, (), (3, 1, 2, 3), (0.0, 0.0, 1.0, 0.0), rank=2 * i) for i in range(3)]
    assert describe(explain_patterns(shown, 1.0), VOCAB) == "`B`"
    e = Evidence(
        0, 2, trigger=2, context=(3, 1), activation=1.0, kept=0.5, replaced=(0.05, 0.5), important=((1, 1),)
    )
    assert e.candidate() == Pattern(frozenset({2}), ((1, frozenset({1})),))
    (row,) = e.counterfactuals()  # only the replacement that silenced it, scaled by what truncation kept
    assert (row.context, row.token_ids, row.acts) == ((3, -1), (2,), (0.1,))
    assert describe(explain_patterns(shown, 1.0, [e]), VOCAB) == "`B` after `A`"
