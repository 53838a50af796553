"""Heads end to end in headless Chromium: the heads page's heat map and a click on a cell, the head
page's attention-coloured tokens (hostile tokens as text) and j / k, the probe's attention on the tiny
Llama. Every test ends with no console errors in the browser."""

from __future__ import annotations

import pytest
from app_screenshot import free_port
from browser_helpers import wait_for_path
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.support.ui import WebDriverWait
from synthetic import XSS_TOKENS, make_synthetic_store

from neurodash.app import create_app

pytestmark = pytest.mark.browser


def start(dash_duo, store_path, path: str) -> None:
    dash_duo.start_server(create_app(store_path), port=free_port())
    dash_duo.driver.get(dash_duo.server_url + path)
    dash_duo.wait_for_element(".nd-main .nd-title")


def test_heads_page_heat_map_opens_a_head(dash_duo, heads_store):
    start(dash_duo, heads_store, "/heads")
    dash_duo.wait_for_element("#heads-heatmap .heatmaplayer")
    dash_duo.wait_for_element("#heads-grid .ag-row .nd-grid-link")
    assert dash_duo.find_element(".nd-links a[href='/heads']").text == "Heads"
    dash_duo.select_dcc_dropdown("#heads-metric", "attn entropy")
    dash_duo.wait_for_contains_text("#heads-heatmap .colorbar", "attn entropy")
    layer, head = 2, 3  # of 3 layers (layer 0 on top) x 4 heads
    dash_duo.click_at_coord_fractions("#heads-heatmap .nsewdrag", (head + 0.5) / 4, (layer + 0.5) / 3)
    wait_for_path(dash_duo, f"/head/{layer}/{head}")
    dash_duo.wait_for_text_to_equal(".nd-unit-header h1", f"L{layer}H{head}")
    assert dash_duo.driver.execute_script("return performance.getEntriesByType('navigation').length") == 1
    assert dash_duo.get_logs() == []


def test_head_page_colours_tokens_by_attention_as_text(dash_duo, heads_store):
    start(dash_duo, heads_store, "/head/1/2")
    dash_duo.wait_for_element("#head-logits .ytick")
    dash_duo.wait_for_element("#head-pattern .heatmaplayer")
    driver = dash_duo.driver
    read = (
        "return [...document.querySelectorAll('.nd-example .nd-tokens')].slice(0, 3).map(row => "
        "[...row.children].map(s => [s.textContent, s.title, s.style.backgroundColor, s.className]))"
    )
    WebDriverWait(driver, 10).until(lambda d: d.execute_script(read))
    for row in driver.execute_script(read):
        query = [i for i, (*_, mark) in enumerate(row) if mark == "nd-tok-max"]
        assert len(query) == 1 and row[query[0]][1].endswith("(query)")
        assert all(" attention " in title for _, title, _, _ in row)
        assert all(colour == "" for _, _, colour, _ in row[query[0] + 1 :])  # no weight after the query
        assert any(colour.startswith("rgb") and "120, 70, 190" in colour for _, _, colour, _ in row)
        assert set(XSS_TOKENS) <= {text for text, *_ in row}  # as text
    assert driver.execute_script("return window.__pwned") is None
    assert (
        driver.execute_script("return document.querySelectorAll('.nd-main img, .nd-main script').length") == 0
    )
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018
    dash_duo.find_element(".nd-example .nd-tokens > span").click()  # the inspector shows the weight
    dash_duo.wait_for_contains_text("#token-inspector", "attention")
    # a key per drawn page, as a reader steps: a key pressed before the new page is drawn follows the
    # old page's links
    for key, path, title in (
        ("j", "/head/1/3", "L1H3"),
        ("k", "/head/1/2", "L1H2"),
        ("k", "/head/1/1", "L1H1"),
    ):
        ActionChains(driver).send_keys(key).perform()
        wait_for_path(dash_duo, path)
        dash_duo.wait_for_text_to_equal(".nd-main .nd-title", title)
    assert dash_duo.get_logs() == []


def test_a_heads_unit_address_and_the_jump_box_lead_to_head_pages(dash_duo, heads_store):
    start(dash_duo, heads_store, "/unit/L0.attn/1")
    dash_duo.wait_for_text_to_equal(".nd-unit-header h1", "L0H1")
    box = dash_duo.find_element("#jump-input")
    box.send_keys("L2H0\n")
    wait_for_path(dash_duo, "/head/2/0")
    dash_duo.wait_for_text_to_equal(".nd-unit-header h1", "L2H0")
    assert dash_duo.get_logs() == []


@pytest.fixture(scope="module")
def tiny_heads_store(tiny_model_dir, tmp_path_factory):
    """A synthetic store that names the tiny Llama (2 layers, 48 neurons, 4 heads each): the probe runs it."""
    return make_synthetic_store(
        tmp_path_factory.mktemp("tiny-heads") / "store.duckdb",
        n_layers=2,
        n_units=48,
        n_sequences=64,
        tokens=XSS_TOKENS,
        head_layers=(0, 1),
        model=str(tiny_model_dir),
    )


def test_probe_shows_attention_on_the_tiny_model(dash_duo, tiny_heads_store, tmp_path, monkeypatch):
    monkeypatch.setenv("NEURODASH_HOME", str(tmp_path))
    start(dash_duo, tiny_heads_store, "/probe")
    dash_duo.find_element("#probe-text").send_keys('def greet(name):\n    return f"Hello, {name}!"')
    dash_duo.find_element("#probe-run").click()
    dash_duo.wait_for_contains_text("#probe-status", "tokens probed", timeout=90)
    dash_duo.wait_for_element("#probe-attn-figure .heatmaplayer")
    WebDriverWait(dash_duo.driver, 10).until(
        lambda d: d.execute_script("return document.querySelectorAll('.nd-arcs svg path').length") > 0
    )
    arcs = dash_duo.driver.execute_script(
        "return [...document.querySelectorAll('.nd-arc-tokens > span')].map(s => s.textContent).join('')"
    )
    assert arcs.startswith("<bos>def greet(name):\u21b5")  # the text, as text, on one line
    dash_duo.select_dcc_dropdown("#probe-attn-layer", "1")
    dash_duo.wait_for_contains_text("#probe-attn-figure .gtitle", "L1H0")
    token = dash_duo.find_elements(".nd-probe-tokens .nd-tokens > span")[2]
    dash_duo.driver.execute_script("arguments[0].click()", token)  # under the sticky top bar once scrolled
    dash_duo.wait_for_contains_text("#probe-attn-top-heads", "Heads attending most")
    assert (
        dash_duo.find_element("#probe-attn-top-heads a")
        .get_attribute("href")
        .startswith(dash_duo.server_url + "/head/")
    )
    assert dash_duo.get_logs() == []
