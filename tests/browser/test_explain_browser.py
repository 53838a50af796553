"""The unit page's explanation panel in headless Chromium: the explanation, its score and the held-out
tokens where it was most wrong; a note where the unit has none. No console errors (and the synthetic
store's XSS tokens stay text)."""

from __future__ import annotations

import pytest
from app_screenshot import free_port

from neurodash.app import create_app
from neurodash.explain_run import explain_store
from neurodash.storage.explanations import Explanations
from neurodash.units import UnitRef

pytestmark = pytest.mark.browser


@pytest.fixture()
def explained_store(synthetic_store, tmp_path):
    link = tmp_path / "synthetic.duckdb"
    link.symlink_to(synthetic_store)
    explain_store(link, units=["L1N5"])
    return link


def test_the_unit_page_shows_the_explanation_its_score_and_where_it_was_wrong(dash_duo, explained_store):
    (e,) = Explanations.beside(explained_store).of_unit(UnitRef("L1.mlp", 5))
    dash_duo.start_server(create_app(explained_store), port=free_port())
    dash_duo.driver.get(dash_duo.server_url + "/unit/L1.mlp/5")
    dash_duo.wait_for_contains_text("#nd-explanation", "pattern:")
    panel = dash_duo.find_element("#nd-explanation")
    assert "correlation" in panel.text
    assert (f"{e.correlation:.2f}" if e.correlation is not None else "–") in panel.text
    wrong = e.most_wrong()
    assert wrong, "the synthetic unit is not explained perfectly"
    rows = dash_duo.find_elements("#nd-explanation .nd-wrong-table tbody tr")
    assert len(rows) == len(wrong)
    assert rows[0].find_element("css selector", "strong").get_attribute("textContent") == wrong[0].token
    assert dash_duo.driver.execute_script("return window.__pwned || window.__xss || null") is None

    dash_duo.driver.get(dash_duo.server_url + "/unit/L1.mlp/6")
    dash_duo.wait_for_contains_text("#nd-explanation", "No explanation yet")
    assert dash_duo.get_logs() == []
