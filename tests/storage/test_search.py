"""``Store.units_peaking_on``: the units whose top examples peak on a token, against a brute force
over every unit's examples."""

from __future__ import annotations

from collections import Counter

import pytest

from neurodash.storage import Store
from neurodash.units import UnitRef


def brute_force(store: Store, wanted) -> dict:
    """Per unit: (how many of its top examples peak on a token that ``wanted`` accepts, their max)."""
    found = {}
    for s in store.sources():
        for unit in range(s.n_units):
            tops = store.examples(UnitRef(s.source_id, unit), ["top"])
            hits = [e.value for e in tops if wanted(e.max_token)]
            if hits:
                found[UnitRef(s.source_id, unit)] = (len(hits), max(hits), len(tops))
    return found


@pytest.fixture(scope="module")
def store(synthetic_store):
    with Store(synthetic_store) as s:
        yield s


def test_exact_token_search_counts_every_units_top_examples_peaking_on_it(store):
    first = store.examples(UnitRef("L1.mlp", 3), ["top"])[0].max_token
    expected = brute_force(store, lambda t: t == first or t.strip() == first.strip())
    found = store.units_peaking_on(first, limit=1000)
    assert {p.ref: (p.n, pytest.approx(p.value), p.n_top) for p in found} == expected
    assert [p.n for p in found] == sorted((p.n for p in found), reverse=True)  # most matches first
    assert all(first.strip() in {t.strip() for t in p.tokens} for p in found)
    # without its surrounding spaces the token is found as well
    assert [p.ref for p in store.units_peaking_on(first.strip(), limit=1000)] == [p.ref for p in found]


def test_substring_search_ignores_case(store):
    expected = brute_force(store, lambda t: "neuron" in t.lower())
    found = store.units_peaking_on("NEURON", substring=True, limit=10_000)
    assert {p.ref: p.n for p in found} == {ref: n for ref, (n, _, _) in expected.items()}
    assert Counter(p.ref.source_id for p in found)  # across sources
    assert len(store.units_peaking_on("NEURON", substring=True, limit=5)) == 5


@pytest.mark.parametrize("text", ["", "   ", "no such token anywhere"])
def test_nothing_to_find(store, text):
    assert store.units_peaking_on(text) == []
    if text.strip():
        assert store.units_peaking_on(text, substring=True) == []
