"""The overview's search by meaning (``app/panels/meaning.py``) as plain functions: results for a query,
the jump box's ``/?q=``, and what a store without embeddings shows."""

from __future__ import annotations

import shutil

import pytest
from app_helpers import by_id, find, texts
from dash import html

from neurodash.app import create_app, ids
from neurodash.app.pages import overview
from neurodash.app.panels import meaning
from neurodash.meaning import examples_texts
from neurodash.storage import Store


@pytest.fixture(scope="module")
def app(meaning_store):
    return create_app(meaning_store)


def rows(component) -> list:
    return find(html.Div(component), lambda c: getattr(c, "className", None) == "nd-meaning-row")


def test_a_query_lists_the_nearest_units_with_links(app, meaning_store):
    with Store(meaning_store) as store:
        own = examples_texts(store)[7]
    with app.server.test_request_context("/"):
        found = meaning.results(own.text)
    first = rows(found)[0]
    assert len(rows(found)) == meaning.LIMIT
    link = find(first, lambda c: getattr(c, "href", None) is not None)[0]
    assert link.href == f"/unit/{own.ref.source_id}/{own.ref.unit}"
    assert "1.000" in texts(first) and "—" in texts(first)  # no explanation yet
    assert any("nearest in meaning" in t for t in texts(found))


def test_the_jump_box_query_fills_both_searches(app):
    with app.server.test_request_context("/?q=closing+brackets"):
        page = overview.layout(q="closing brackets")
    assert by_id(page, ids.MEANING_INPUT).value == "closing brackets"
    assert by_id(page, ids.SEARCH_INPUT).value == "closing brackets"
    assert len(rows(by_id(page, ids.MEANING_RESULTS))) == meaning.LIMIT


def test_an_empty_query_shows_nothing(app):
    with app.server.test_request_context("/"):
        assert meaning.results("  ") == [] and meaning.results(None) == []


def test_a_store_without_embeddings_says_how_to_make_them(synthetic_store, tmp_path):
    store = tmp_path / "plain.duckdb"
    shutil.copy(synthetic_store, store)
    plain = create_app(store)
    with plain.server.test_request_context("/"):
        page = overview.layout()
        found = meaning.results("closing brackets")
    hint = " ".join(texts(by_id(page, ids.MEANING_RESULTS)))
    assert f"neurodash embed {store}" in hint
    assert len(found) == 1 and f"neurodash embed {store}" in texts(found)[0]
