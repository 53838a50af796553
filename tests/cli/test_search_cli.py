"""``neurodash embed`` and ``neurodash search``: search by meaning from the command line; bad input is
one ``error:`` line and exit status 2."""

from __future__ import annotations

import json
import shutil

import pytest
from cli_helpers import assert_failed

from neurodash.cli import main
from neurodash.meaning import examples_texts
from neurodash.storage import Store
from neurodash.storage.embeddings import Embeddings


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_search_prints_the_nearest_units(capsys, meaning_store):
    with Store(meaning_store) as store:
        own = examples_texts(store)[5]
    code, out, _ = run_cli(capsys, "search", meaning_store, own.text, "--limit", "4")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 5 and lines[0].split()[:2] == ["similarity", "unit"]
    assert lines[1].split()[:2] == ["1.000", str(own.ref)]


def test_search_as_json(capsys, meaning_store):
    code, out, _ = run_cli(capsys, "search", meaning_store, "numbers in a list", "--json", "--limit", "3")
    hits = json.loads(out)
    assert code == 0 and len(hits) == 3
    assert set(hits[0]) >= {"unit", "similarity", "matched", "text", "explanation", "correlation"}
    assert hits[0]["similarity"] >= hits[1]["similarity"] >= hits[2]["similarity"]


def test_embed_writes_the_file_beside_the_store_and_keeps_what_is_unchanged(capsys, meaning_store, tmp_path):
    store = tmp_path / "copy.duckdb"
    shutil.copy(meaning_store, store)
    code, out, _ = run_cli(capsys, "embed", store, "--sources", "L0.mlp")
    assert code == 0 and out.startswith(
        f"wrote {Embeddings.beside(store).path}: 40 texts embedded, 0 unchanged"
    )
    code, out, _ = run_cli(capsys, "embed", store, "--sources", "L0.mlp")
    assert code == 0 and "0 texts embedded, 40 unchanged" in out


@pytest.mark.parametrize("query", ["", "  "])
def test_an_empty_query(capsys, meaning_store, query):
    code, _, err = run_cli(capsys, "search", meaning_store, query)
    assert_failed(code, err, "the query is empty")


def test_a_store_without_embeddings_says_how_to_make_them(capsys, synthetic_store, tmp_path):
    store = tmp_path / "plain.duckdb"
    shutil.copy(synthetic_store, store)
    code, _, err = run_cli(capsys, "search", store, "closing brackets")
    assert_failed(code, err, f"make them with `neurodash embed {store}`", Embeddings.beside(store).path)


def test_no_store(capsys, tmp_path):
    code, _, err = run_cli(capsys, "search", tmp_path / "none.duckdb", "closing brackets")
    assert_failed(code, err, "no store at")
    code, _, err = run_cli(capsys, "embed", tmp_path / "none.duckdb")
    assert_failed(code, err, "no store at", tmp_path / "none.explanations.duckdb")


def test_bad_limit_and_unknown_source(capsys, meaning_store):
    code, _, err = run_cli(capsys, "search", meaning_store, "brackets", "--limit", "0")
    assert_failed(code, err, "--limit must be at least 1")
    code, _, err = run_cli(capsys, "embed", meaning_store, "--sources", "L7.mlp")
    assert_failed(code, err, "no source 'L7.mlp'")


def test_an_explanations_file_of_another_kind(capsys, meaning_store, synthetic_store):
    code, _, err = run_cli(capsys, "search", meaning_store, "brackets", "--file", synthetic_store)
    assert_failed(code, err, "store")
