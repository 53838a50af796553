"""``Embeddings``: vectors kept beside a store and searched by cosine similarity in DuckDB, with each
unit's best explanation (rows of ``explanations``, written here directly as ``neurodash explain``
would)."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest

from neurodash.errors import NeurodashError
from neurodash.storage import owned
from neurodash.storage.embeddings import EXAMPLES, EXPLANATION, Embeddings, UnitText, explanations_path
from neurodash.storage.schema import EMBEDDING_DIM, EXPLANATIONS
from neurodash.units import UnitRef

MODEL = "test-model"


def unit_vector(*hot: int) -> np.ndarray:
    v = np.zeros(EMBEDDING_DIM, dtype=np.float32)
    v[list(hot)] = 1.0
    return v / np.linalg.norm(v)


def text(source: str, unit: int, kind: str = EXAMPLES, words: str = "") -> UnitText:
    return UnitText(UnitRef(source, unit), kind, words or f"{source}/{unit} {kind}")


def add_explanations(path, rows) -> None:
    with owned.transaction(path, EXPLANATIONS, 5.0) as con:
        for source_id, unit, explainer, explanation, correlation in rows:
            con.execute(
                "INSERT INTO explanations (source_id, unit, explainer, explanation, correlation) VALUES (?, ?, ?, ?, ?)",
                [source_id, unit, explainer, explanation, correlation],
            )


@pytest.fixture
def embeddings(tmp_path) -> Embeddings:
    found = Embeddings.beside(tmp_path / "store.duckdb")
    assert (
        found.path == explanations_path(tmp_path / "store.duckdb") == tmp_path / "store.explanations.duckdb"
    )
    texts = [text("L0.mlp", 0), text("L0.mlp", 1), text("L1.sae", 7), text("L1.sae", 7, EXPLANATION)]
    found.save(texts, np.stack([unit_vector(0), unit_vector(1), unit_vector(2), unit_vector(0, 3)]), MODEL)
    return found


def test_nearest_units_first_each_by_its_best_text(embeddings):
    hits = embeddings.search(unit_vector(0), MODEL, limit=10)
    assert [h.ref for h in hits] == [UnitRef("L0.mlp", 0), UnitRef("L1.sae", 7), UnitRef("L0.mlp", 1)]
    assert hits[0].similarity == pytest.approx(1.0) and hits[0].text == "L0.mlp/0 examples"
    second = hits[1]  # its explanation (0.71) matches better than its examples (0)
    assert second.text_kind == EXPLANATION and second.similarity == pytest.approx(2**-0.5, abs=1e-6)
    assert second.explanation is None and second.correlation is None  # no explanations rows yet
    assert [h.ref for h in embeddings.search(unit_vector(2), MODEL, limit=1)] == [UnitRef("L1.sae", 7)]


def test_search_matches_a_brute_force_over_random_vectors(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, EMBEDDING_DIM)).astype(np.float32)
    texts = [text("L0.mlp", i) for i in range(300)]
    found = Embeddings(tmp_path / "x.explanations.duckdb")
    found.save(texts, vectors, MODEL)
    query = rng.normal(size=EMBEDDING_DIM).astype(np.float32)
    cosine = vectors @ query / np.linalg.norm(vectors, axis=1) / np.linalg.norm(query)
    hits = found.search(query, MODEL, limit=15)
    assert [h.ref.unit for h in hits] == list(np.argsort(-cosine)[:15])
    np.testing.assert_allclose([h.similarity for h in hits], np.sort(cosine)[::-1][:15], atol=1e-5)


def test_search_shows_each_units_best_scored_explanation(embeddings):
    add_explanations(
        embeddings.path,
        [
            ("L1.sae", 7, "patterns", "` x` after `(`", 0.41),
            ("L1.sae", 7, "llm", "variables in calls", 0.63),
            ("L0.mlp", 1, "patterns", "", None),  # an empty explanation is none
        ],
    )
    hits = {h.ref: h for h in embeddings.search(unit_vector(0), MODEL)}
    assert (hits[UnitRef("L1.sae", 7)].explanation, hits[UnitRef("L1.sae", 7)].correlation) == (
        "variables in calls",
        pytest.approx(0.63),
    )
    assert [t.text for t in embeddings.explanation_texts()] == ["variables in calls"]
    assert embeddings.explanation_texts()[0].ref == UnitRef("L1.sae", 7)


def test_saving_again_replaces_a_units_text_and_vector(embeddings):
    embeddings.save([text("L0.mlp", 0, words="new words")], unit_vector(5)[None], MODEL)
    assert embeddings.count(MODEL) == 4
    assert embeddings.stored_texts(MODEL)[(UnitRef("L0.mlp", 0), EXAMPLES)] == "new words"
    assert embeddings.search(unit_vector(5), MODEL, limit=1)[0].ref == UnitRef("L0.mlp", 0)
    assert embeddings.count("another-model") == 0 and embeddings.search(unit_vector(5), "another-model") == []


def test_a_file_not_made_yet_has_nothing(tmp_path):
    missing = Embeddings(tmp_path / "none.explanations.duckdb")
    assert (
        missing.count(MODEL) == 0 and missing.stored_texts(MODEL) == {} and missing.explanation_texts() == []
    )
    assert not missing.path.exists()


def test_a_file_of_another_kind_is_refused_in_one_line(tmp_path):
    other = tmp_path / "other.duckdb"
    duckdb.connect(str(other)).execute("CREATE TABLE t (x INTEGER)").close()
    with pytest.raises(NeurodashError) as e:
        Embeddings(other).check()
    assert "\n" not in str(e.value)


def test_texts_and_vectors_must_pair_up(embeddings):
    with pytest.raises(ValueError):
        embeddings.save([text("L0.mlp", 3)], np.zeros((2, EMBEDDING_DIM), np.float32), MODEL)
