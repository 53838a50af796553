"""Search by meaning (``neurodash.meaning``): units' texts embedded beside the store, a query in words
ranks them, and the explanations ``neurodash explain`` writes are embedded too (written here directly)."""

from __future__ import annotations

import shutil

import pytest

from neurodash.errors import NeurodashError
from neurodash.meaning import (
    embed_store,
    examples_text,
    examples_texts,
    has_embeddings,
    search_by_meaning,
    token_kind,
)
from neurodash.storage import Store, owned
from neurodash.storage.embeddings import EXAMPLES, EXPLANATION, Embeddings, Snippet, UnitText
from neurodash.storage.schema import EXPLANATIONS
from neurodash.units import UnitRef


@pytest.mark.parametrize(
    "token, kind",
    [
        (")", "right parenthesis"),
        (" ])", "right square bracket right parenthesis"),
        (" 42", "number"),
        ("\n", "newline"),
        ("  ", "space"),
        (" import", None),
        ("x2", None),
    ],
)
def test_token_kind_names_what_a_tokens_text_does_not_say(token, kind):
    assert token_kind(token) == kind


def test_examples_text_names_peak_tokens_most_often_first_then_contexts():
    snippets = [
        Snippet(")", "print(x", "\n"),
        Snippet(" 6", "1, 2, 3, 4, 5,", ","),
        Snippet(")", "f(a, b", ";"),
    ]
    assert examples_text(snippets) == (
        'fires on ")" (right parenthesis), "6" (number) · in: print(x`)` … 1, 2, 3, 4, 5,` 6`, … f(a, b`)`;'
    )


@pytest.fixture(scope="module")
def texts(meaning_store):
    with Store(meaning_store) as store:
        return examples_texts(store)


def test_every_unit_is_embedded(meaning_store, texts):
    with Store(meaning_store) as store:
        n_units = sum(s.n_units for s in store.sources())
    assert len(texts) == n_units == Embeddings.beside(meaning_store).count("all-MiniLM-L6-v2")
    assert has_embeddings(meaning_store)


def test_a_query_for_a_units_own_text_ranks_it_first(meaning_store, texts):
    for t in texts[::17]:
        hits = search_by_meaning(meaning_store, t.text, limit=3)
        assert hits[0].ref == t.ref and hits[0].text == t.text and hits[0].text_kind == EXAMPLES
        assert hits[0].similarity == pytest.approx(1.0, abs=1e-4)
        assert hits[0].similarity >= hits[1].similarity >= hits[2].similarity


def test_units_across_sources_come_back(meaning_store):
    hits = search_by_meaning(meaning_store, "closing brackets", limit=60)
    assert len(hits) == 60 and len({h.ref.source_id for h in hits}) > 1


def test_explanations_are_embedded_and_shown_with_their_score(meaning_store, tmp_path):
    store = tmp_path / "explained.duckdb"
    shutil.copy(meaning_store, store)
    shutil.copy(Embeddings.beside(meaning_store).path, Embeddings.beside(store).path)
    explained = UnitRef("L2.mlp", 11)
    before = search_by_meaning(store, "giraffes at the zoo", limit=5)  # the in-memory copy, made now
    assert all(h.explanation is None for h in before)
    with owned.transaction(Embeddings.beside(store).path, EXPLANATIONS, 5.0) as con:
        con.execute(
            "INSERT INTO explanations (source_id, unit, explainer, explanation, correlation) VALUES "
            "('L2.mlp', 11, 'patterns', 'the word giraffe in stories about the zoo', 0.72)"
        )
    report = embed_store(store)
    assert (report.embedded, report.unchanged) == (1, 120)  # only the new explanation
    hits = search_by_meaning(store, "giraffes at the zoo", limit=5)
    assert hits[0].ref == explained and hits[0].text_kind == EXPLANATION
    assert (hits[0].explanation, hits[0].correlation) == (
        "the word giraffe in stories about the zoo",
        pytest.approx(0.72),
    )
    assert embed_store(store).embedded == 0  # nothing changed since
    assert before[0].ref != explained


@pytest.mark.parametrize("query", ["", "   "])
def test_an_empty_query_is_refused(meaning_store, query):
    with pytest.raises(NeurodashError, match="the query is empty"):
        search_by_meaning(meaning_store, query)


def test_a_store_without_embeddings_says_how_to_make_them(synthetic_store, tmp_path):
    store = tmp_path / "plain.duckdb"
    shutil.copy(synthetic_store, store)
    assert not has_embeddings(store)
    with pytest.raises(NeurodashError, match=f"neurodash embed {store}"):
        search_by_meaning(store, "closing brackets")


def test_a_missing_store_and_an_unknown_source_are_refused(meaning_store, tmp_path):
    with pytest.raises(NeurodashError, match="no store"):
        search_by_meaning(tmp_path / "none.duckdb", "closing brackets")
    with pytest.raises(NeurodashError, match="no source 'L9.mlp'"):
        embed_store(meaning_store, sources=["L9.mlp"])


def test_the_files_duckdb_scan_and_the_in_memory_matrix_rank_alike(meaning_store):
    from neurodash.meaning import search_index
    from precompute.embed import cached_embedder

    embeddings = Embeddings.beside(meaning_store)
    for query in ("closing brackets", "numbers in a list"):
        vector = cached_embedder().embed_one(query)
        in_file = embeddings.search(vector, "all-MiniLM-L6-v2", limit=10)
        in_memory = search_index(embeddings.path).reader().search(vector, "all-MiniLM-L6-v2", limit=10)
        assert [(h.ref, h.text_kind, h.text) for h in in_file] == [
            (h.ref, h.text_kind, h.text) for h in in_memory
        ]
        assert [h.similarity for h in in_file] == pytest.approx([h.similarity for h in in_memory], abs=1e-5)


PLANTED = {  # units whose top examples are plain to a reader, as ``examples_text`` writes them
    UnitRef("L3.mlp", 1): [Snippet(" 6", "[1, 2, 3, 4, 5,", ","), Snippet("42", "x = [7, ", "]")],
    UnitRef("L3.mlp", 2): [
        Snippet(")", "print(f(x", "\n"),
        Snippet("]", "a[b[1", ")"),
        Snippet("})", "{'a': 1", ";"),
    ],
    UnitRef("L3.mlp", 3): [Snippet(" import", "\nfrom os", " path"), Snippet("import", "\n", " numpy")],
    UnitRef("L3.mlp", 4): [Snippet(" Alice", "said", " and"), Snippet(" Bob", "met", ".")],
    UnitRef("L3.mlp", 5): [Snippet(" the", "in", " end"), Snippet(" a", "is", " good")],
}


@pytest.mark.parametrize(
    "query, unit",
    [("numbers in a list", 1), ("closing brackets", 2), ("import statements", 3), ("names of people", 4)],
)
def test_a_query_in_words_finds_the_unit_whose_examples_match(query, unit, tmp_path):
    from neurodash.meaning import search_index
    from precompute.embed import cached_embedder

    texts = [UnitText(ref, EXAMPLES, examples_text(snippets)) for ref, snippets in PLANTED.items()]
    embeddings = Embeddings(tmp_path / "planted.explanations.duckdb").check()
    embeddings.save(texts, cached_embedder().embed([t.text for t in texts]), "all-MiniLM-L6-v2")
    hits = (
        search_index(embeddings.path).reader().search(cached_embedder().embed_one(query), "all-MiniLM-L6-v2")
    )
    assert hits[0].ref == UnitRef("L3.mlp", unit), [(h.ref.unit, round(h.similarity, 3)) for h in hits]
