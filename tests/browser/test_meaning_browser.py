"""Search by meaning end to end in headless Chromium: the overview's box and the jump box take words
and list the nearest units, each a link to its page; a store without embeddings says how to make
them. No console errors."""

from __future__ import annotations

import shutil

import pytest
from app_screenshot import free_port
from browser_helpers import wait_for_path
from selenium.webdriver.common.keys import Keys

from neurodash.app import create_app, ids
from neurodash.meaning import examples_texts, search_by_meaning
from neurodash.storage import Store

pytestmark = pytest.mark.browser

ROWS = "#meaning-results .nd-meaning-row"


def start(dash_duo, store_path) -> None:
    dash_duo.start_server(create_app(store_path), port=free_port())
    dash_duo.wait_for_element(".nd-main .nd-title")


def test_a_query_in_words_lists_the_nearest_units(dash_duo, meaning_store):
    with Store(meaning_store) as store:
        own = examples_texts(store)[42]
    start(dash_duo, meaning_store)
    box = dash_duo.find_element("#meaning-input")
    box.send_keys(own.text[:200] + Keys.ENTER)
    dash_duo.wait_for_element(f"{ROWS} a")
    expected = [f"/unit/{h.ref}" for h in search_by_meaning(meaning_store, own.text[:200])]
    hrefs = [a.get_attribute("pathname") for a in dash_duo.find_elements(f"{ROWS} a")]
    assert hrefs == expected and hrefs[0] == f"/unit/{own.ref}"
    dash_duo.find_elements(f"{ROWS} a")[0].click()
    wait_for_path(dash_duo, f"/unit/{own.ref}")
    # the unit's page drawn (its permalink and examples): no request still under way when the server stops
    dash_duo.wait_for_contains_text(f"#{ids.PERMALINK}", f"/unit/{own.ref}")
    dash_duo.wait_for_element(".nd-examples")
    assert dash_duo.get_logs() == []


def test_the_jump_box_searches_words_by_meaning(dash_duo, meaning_store):
    start(dash_duo, meaning_store)
    dash_duo.find_element("#jump-input").send_keys("closing brackets" + Keys.ENTER)
    wait_for_path(dash_duo, "/?q=closing+brackets")
    dash_duo.wait_for_element(f"{ROWS} a")
    assert dash_duo.find_element("#meaning-input").get_attribute("value") == "closing brackets"
    assert len(dash_duo.find_elements(ROWS)) == 20
    assert dash_duo.get_logs() == []


def test_a_store_without_embeddings_says_how_to_make_them(dash_duo, synthetic_store, tmp_path):
    store = tmp_path / "plain.duckdb"
    shutil.copy(synthetic_store, store)
    start(dash_duo, store)
    dash_duo.wait_for_contains_text("#meaning-results", f"neurodash embed {store}")
    dash_duo.find_element("#meaning-input").send_keys("closing brackets" + Keys.ENTER)
    dash_duo.wait_for_contains_text("#meaning-results", "has no embeddings")
    assert dash_duo.get_logs() == []
