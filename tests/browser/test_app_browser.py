"""End to end in headless Chromium: every page, navigation, hover, keys, jump box, probe, XSS.

Every test ends with no console errors in the browser.
"""

from __future__ import annotations

import json

import pytest
from app_screenshot import free_port
from browser_helpers import wait_for_download, wait_for_path
from dash import Dash, Input, Output, html
from flask import request
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait
from synthetic import XSS_TOKENS, make_synthetic_store

from neurodash.app import ASSETS, create_app, routes
from neurodash.app.render import highlights
from neurodash.storage import Store
from neurodash.units import UnitRef

pytestmark = pytest.mark.browser


def start(dash_duo, store_path, path: str = "/") -> None:
    dash_duo.start_server(create_app(store_path), port=free_port())
    if path != "/":
        dash_duo.driver.get(dash_duo.server_url + path)
    dash_duo.wait_for_element(".nd-main .nd-title")


def press(dash_duo, *keys: str) -> None:
    ActionChains(dash_duo.driver).send_keys(*keys).perform()


def test_overview_sorts_and_opens_a_unit(dash_duo, synthetic_store):
    start(dash_duo, synthetic_store)
    dash_duo.wait_for_contains_text(".nd-stats", "120")
    dash_duo.wait_for_element(".ag-row .nd-grid-link")
    dash_duo.wait_for_element("#layer-plots .box")
    with Store(synthetic_store) as store:
        units = store.units_frame()
    strongest = units.loc[units["max_act"].idxmax()]
    header = dash_duo.find_element('.ag-header-cell[col-id="max_act"] .ag-header-cell-label')
    header.click()
    header.click()  # ascending, then descending
    first = '.ag-row[row-index="0"] .nd-grid-link'
    dash_duo.wait_for_text_to_equal(first, f"L{strongest['layer']}N{strongest['unit']}")
    dash_duo.find_element(first).click()
    wait_for_path(dash_duo, f"/unit/{strongest['source_id']}/{strongest['unit']}")
    dash_duo.wait_for_text_to_equal(".nd-unit-header h1", f"L{strongest['layer']}N{strongest['unit']}")
    assert (
        dash_duo.driver.execute_script("return performance.getEntriesByType('navigation').length") == 1
    )  # no reload
    assert dash_duo.get_logs() == []


def test_overview_lists_every_unit_and_revalidates_its_table(dash_duo, synthetic_store):
    """The table's rows come from their own address: every unit listed; back on the overview, the
    browser asks again with its ETag and the server answers 304, not the table."""
    app = create_app(synthetic_store)
    statuses: list[int] = []

    @app.server.after_request
    def record(response):
        if request.path == routes.UNITS_TABLE_DATA:
            statuses.append(response.status_code)
        return response

    dash_duo.start_server(app, port=free_port())
    dash_duo.wait_for_text_to_equal("#units-count", "120 units")
    dash_duo.wait_for_text_to_equal("#units-shown", "120 units shown")
    dash_duo.find_element(".nd-grid-link").click()
    dash_duo.wait_for_element(".nd-unit-header h1")
    dash_duo.find_element(".nd-links a[href='/']").click()
    dash_duo.wait_for_text_to_equal("#units-shown", "120 units shown")
    assert statuses == [200, 304]
    assert dash_duo.get_logs() == []


def test_unit_page_hover_keys_and_permalink(dash_duo, synthetic_store):
    start(dash_duo, synthetic_store, "/unit/L1.mlp/5")
    dash_duo.wait_for_text_to_equal(".nd-unit-header h1", "L1N5")
    token = dash_duo.find_elements(".nd-example .nd-tok-max")[0]  # the strongest example's peak
    ActionChains(dash_duo.driver).move_to_element(token).perform()
    title = token.get_attribute("title")
    assert title.startswith("'") and title.endswith(f"{float(title.split()[-1]):+.3f}")
    dash_duo.wait_for_text_to_equal("#token-inspector", title)
    assert dash_duo.find_element("#permalink").text == dash_duo.server_url + "/unit/L1.mlp/5"

    dash_duo.driver.execute_script("window.scrollTo(0, 0)")  # hovering a token scrolled the page
    dash_duo.find_element(".nd-title").click()  # focus the page, not a text box
    press(dash_duo, "j")
    wait_for_path(dash_duo, "/unit/L1.mlp/6")
    dash_duo.wait_for_text_to_equal(".nd-unit-header h1", "L1N6")
    press(dash_duo, Keys.ARROW_LEFT)
    dash_duo.wait_for_text_to_equal(".nd-unit-header h1", "L1N5")
    press(dash_duo, "k")
    dash_duo.wait_for_text_to_equal(".nd-unit-header h1", "L1N4")
    press(dash_duo, "/")
    assert dash_duo.driver.switch_to.active_element.get_attribute("id") == "jump-input"
    assert dash_duo.get_logs() == []


def test_jump_box(dash_duo, synthetic_store):
    start(dash_duo, synthetic_store)
    box = dash_duo.find_element("#jump-input")
    box.send_keys("L2N3" + Keys.ENTER)
    wait_for_path(dash_duo, "/unit/L2.mlp/3")
    dash_duo.wait_for_text_to_equal(".nd-unit-header h1", "L2N3")
    assert box.get_attribute("value") == ""  # the box clears after a jump
    box.send_keys("L0N99" + Keys.ENTER)
    dash_duo.wait_for_contains_text("#jump-error", "out of range")
    assert dash_duo.driver.current_url == dash_duo.server_url + "/unit/L2.mlp/3"
    dash_duo.clear_input(box)
    box.send_keys("neuron" + Keys.ENTER)  # not a unit reference: a search
    wait_for_path(dash_duo, "/?q=neuron")
    dash_duo.wait_for_element("#search-results .nd-search-row a")
    assert dash_duo.find_element("#search-input").get_attribute("value") == "neuron"
    assert dash_duo.get_logs() == []


def test_search_by_token_lists_units_that_peak_on_it(dash_duo, synthetic_store):
    with Store(synthetic_store) as store:
        store_ref = UnitRef("L2.mlp", 5)
        token = store.examples(store_ref, ["top"])[0].max_token
        expected = [str(p.ref) for p in store.units_peaking_on(token)]
    start(dash_duo, synthetic_store)
    box = dash_duo.find_element("#search-input")
    box.send_keys(token.strip())
    dash_duo.wait_for_element("#search-results .nd-search-row a")
    links = dash_duo.find_elements("#search-results .nd-search-row a")
    hrefs = [a.get_attribute("pathname") for a in links]
    assert hrefs == ["/unit/" + ref for ref in expected]
    assert f"/unit/{store_ref}" in hrefs
    link = links[hrefs.index(f"/unit/{store_ref}")]
    dash_duo.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", link)
    assert dash_duo.driver.execute_script("return window.scrollY") > 0
    link.click()
    dash_duo.wait_for_text_to_equal(".nd-unit-header h1", "L2N5")
    assert dash_duo.driver.execute_script("return window.scrollY") == 0  # a new page starts at its top
    assert dash_duo.get_logs() == []


def test_unit_page_reads_at_a_glance(dash_duo, synthetic_store):
    """Top examples come right after the statistics; the hovered token's value follows the cursor."""
    start(dash_duo, synthetic_store, "/unit/L1.mlp/5")
    dash_duo.wait_for_text_to_equal(".nd-unit-header h1", "L1N5")
    titles = [e.get_attribute("textContent") for e in dash_duo.find_elements(".nd-panel > .nd-panel-title")]
    assert titles.index("Examples") < titles.index("Try your own text") < titles.index("Polysemanticity")
    token = dash_duo.find_elements(".nd-example .nd-tok-max")[0]
    ActionChains(dash_duo.driver).move_to_element(token).perform()
    tip = dash_duo.find_element("#nd-tip")
    WebDriverWait(dash_duo.driver, 5).until(lambda _: tip.is_displayed())
    assert tip.text == token.get_attribute("title")
    box, where = token.rect, tip.rect  # near the cursor (the token's centre), not at the top of the page
    assert abs(where["y"] - (box["y"] + box["height"] / 2)) < 40
    assert dash_duo.get_logs() == []


def test_overview_headers_are_readable(dash_duo, synthetic_store):
    start(dash_duo, synthetic_store)
    dash_duo.wait_for_element(".ag-row .nd-grid-link")
    cut = dash_duo.driver.execute_script(
        "return [...document.querySelectorAll('.ag-header-cell-text')]"
        ".filter(e => e.scrollWidth > e.clientWidth).map(e => e.textContent)"
    )
    assert cut == []
    assert dash_duo.get_logs() == []


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/no/such/page", "There is no page at this address."),
        ("/unit/L9.mlp/1", "This store has no unit L9.mlp/1."),
        ("/unit/L0.mlp/4000", "This store has no unit L0.mlp/4000."),
    ],
)
def test_not_found(dash_duo, synthetic_store, path, message):
    start(dash_duo, synthetic_store, path)
    dash_duo.wait_for_text_to_equal(".nd-notfound h1", "Not found")
    dash_duo.wait_for_text_to_equal(".nd-notfound-message", message)
    dash_duo.find_element(".nd-notfound a").click()  # back to the overview
    wait_for_path(dash_duo, "/")
    # The page was served with status 404, which the browser reports; nothing else went wrong.
    assert [log["message"] for log in dash_duo.get_logs()] == [
        f"{dash_duo.server_url}{path} - Failed to load resource: the server responded with a status of 404 (NOT FOUND)"
    ]


def test_untrusted_tokens_show_as_text_and_never_run(dash_duo, synthetic_store):
    start(dash_duo, synthetic_store, "/unit/L0.mlp/0")
    dash_duo.wait_for_element(".nd-example")
    dash_duo.wait_for_element("#unit-logits .ytick")
    driver = dash_duo.driver
    shown = {span.get_attribute("textContent") for span in dash_duo.find_elements(".nd-tokens > span")}
    assert set(XSS_TOKENS) <= shown
    ticks = {t.get_attribute("textContent") for t in dash_duo.find_elements("#unit-logits .ytick text")}
    assert {repr(XSS_TOKENS[0]), repr(XSS_TOKENS[1])} <= ticks
    assert driver.execute_script("return window.__pwned") is None
    assert (
        driver.execute_script("return document.querySelectorAll('.nd-main img, .nd-main script').length") == 0
    )
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018
    assert dash_duo.get_logs() == []


def test_token_rows_render_as_coloured_text(dash_duo):
    """``highlights.token_row`` sends JSON; ``neurodash.js`` makes the spans: text, colour, hover, mark,
    and makes them again when a callback gives the same element new tokens."""
    app = Dash(__name__, assets_folder=str(ASSETS))
    tokens = ["Hello", " world\n", "\t", "", "it's", "'\"\\\x01", XSS_TOKENS[0]]
    acts = [2.0, -1.0, 0.001, 0.5, 1.0, 1.0, 2.0]
    app.layout = highlights.with_token_scale(  # as the shell does around every page
        html.Div(
            [
                html.Div(highlights.token_row(tokens, acts, 2.0, marked_index=0), id="row"),
                html.Button("swap", id="swap"),
            ]
        )
    )
    app.callback(Output("row", "children"), Input("swap", "n_clicks"), prevent_initial_call=True)(
        lambda _: highlights.token_row(["a", "b"], [0.0, -3.0], 3.0, marked_index=1)
    )
    dash_duo.start_server(app, port=free_port())
    read = "return [...document.querySelectorAll('#row .nd-tokens > span')].map(s => [s.textContent, s.title, s.style.backgroundColor, s.className])"
    WebDriverWait(dash_duo.driver, 10).until(lambda d: d.execute_script(read))
    shown = dash_duo.driver.execute_script(read)
    assert [title for _, title, _, _ in shown] == [f"{t!r}  {a:+.3f}" for t, a in zip(tokens, acts)]
    assert [[text, colour, mark] for text, _, colour, mark in shown] == [
        ["Hello", "rgb(240, 120, 20)", "nd-tok-max"],
        [" world↵\n", "rgba(30, 110, 200, 0.5)", ""],
        ["→\t", "", ""],  # too faint to colour
        ["∅", "rgba(240, 120, 20, 0.25)", ""],
        ["it's", "rgba(240, 120, 20, 0.5)", ""],
        ["'\"\\\x01", "rgba(240, 120, 20, 0.5)", ""],
        [XSS_TOKENS[0], "rgb(240, 120, 20)", ""],  # as text
    ]
    dash_duo.find_element("#swap").click()
    WebDriverWait(dash_duo.driver, 10).until(lambda d: len(d.execute_script(read)) == 2)
    assert dash_duo.driver.execute_script(read) == [
        ["a", "'a'  +0.000", "", ""],
        ["b", "'b'  -3.000", "rgb(30, 110, 200)", "nd-tok-max"],
    ]
    assert dash_duo.driver.execute_script("return document.querySelectorAll('#row script').length") == 0
    assert dash_duo.get_logs() == []


@pytest.mark.model
def test_try_your_own_text_on_a_unit_page(dash_duo, probe_store):
    start(dash_duo, probe_store, "/unit/L0.mlp/3")
    box = dash_duo.find_element("#own-text-input")
    assert box.get_attribute("value") == ""
    box.send_keys("import os")
    dash_duo.find_element("#own-text-run").click()
    dash_duo.wait_for_contains_text("#own-text-status", "tokens", timeout=90)
    tokens = dash_duo.find_elements("#own-text-result .nd-tokens > span")
    assert "".join(t.get_attribute("textContent") for t in tokens) == "import os"
    assert all(t.get_attribute("title").split()[-1][0] in "+-" for t in tokens)
    assert dash_duo.get_logs() == []


def run_probe(dash_duo, text: str) -> str:
    """Type ``text`` in the probe's (empty) box, run it, wait for the run's page; its address."""
    box = dash_duo.find_element("#probe-text")
    assert box.get_attribute("value") == "" and box.get_attribute("placeholder")  # nothing to append to
    box.send_keys(text)
    dash_duo.find_element("#probe-run").click()
    dash_duo.wait_for_contains_text("#probe-status", "tokens probed", timeout=90)
    WebDriverWait(dash_duo.driver, 10).until(lambda d: "/probe?run=" in d.current_url)
    dash_duo.wait_for_element("#probe-top-units a")
    return dash_duo.driver.current_url


def probe_tokens(dash_duo) -> str:
    tokens = dash_duo.find_elements(".nd-probe-tokens .nd-tokens > span")
    return "".join(t.get_attribute("textContent") for t in tokens)


def test_text_probe(dash_duo, probe_store, tmp_path, monkeypatch):
    monkeypatch.setenv("NEURODASH_HOME", str(tmp_path))
    start(dash_duo, probe_store, "/probe")
    text = "import os\nprint(os.path.join('a', 'b'))"
    address = run_probe(dash_duo, text)
    assert dash_duo.find_element("#probe-text").get_attribute("value") == text
    WebDriverWait(dash_duo.driver, 10).until(lambda _: probe_tokens(dash_duo) == text.replace("\n", "↵\n"))
    token = dash_duo.find_elements(".nd-probe-tokens .nd-tokens > span")[1]
    dash_duo.driver.execute_script("arguments[0].click()", token)
    dash_duo.wait_for_contains_text("#probe-token-units", "at position 1")
    assert dash_duo.find_element("#probe-token-units code").text == repr(" os")
    rows = dash_duo.find_elements("#probe-token-units tbody tr")
    assert len(rows) > 8  # more than 8 units at a token, each with its own max over the corpus
    headers = [th.text for th in dash_duo.find_elements("#probe-token-units th")]
    assert headers[:4] == ["unit", "activation", "its max", "of its max"]
    act, corpus_max = (float(td.text) for td in rows[0].find_elements("css selector", "td")[1:3])
    share = rows[0].find_elements("css selector", "td")[3].text
    assert share == f"{act / corpus_max:.0%}" or corpus_max <= 0
    link = dash_duo.find_element("#probe-top-units a")
    label = link.text
    link.click()
    dash_duo.wait_for_text_to_equal(".nd-unit-header h1", label)
    assert dash_duo.driver.current_url.startswith(dash_duo.server_url + "/unit/L0.mlp/")
    dash_duo.driver.back()  # the probe again, with its text and results
    WebDriverWait(dash_duo.driver, 10).until(lambda d: d.current_url == address)
    dash_duo.wait_for_contains_text("#probe-status", "tokens probed")
    assert dash_duo.find_element("#probe-text").get_attribute("value") == text
    WebDriverWait(dash_duo.driver, 10).until(lambda _: probe_tokens(dash_duo) == text.replace("\n", "↵\n"))
    dash_duo.wait_for_text_to_equal("#probe-top-units a", label)
    assert dash_duo.get_logs() == []


def test_probe_colours_its_text_by_any_unit(dash_duo, probe_store, tmp_path, monkeypatch):
    monkeypatch.setenv("NEURODASH_HOME", str(tmp_path))
    start(dash_duo, probe_store, "/probe")
    run_probe(dash_duo, "for i in range(3): print(i)")
    top = {a.text for a in dash_duo.find_elements("#probe-top-units a")}
    unit = next(u for u in range(1536) if f"L0N{u}" not in top)  # not one of the top units
    box = dash_duo.find_element("#probe-color-unit")
    box.send_keys(f"L0N{unit}", Keys.ENTER)
    dash_duo.wait_for_contains_text("#probe-color-by", f"L0N{unit} (peak")
    tokens = dash_duo.find_elements(".nd-probe-tokens .nd-tokens > span")
    with Store(probe_store) as store:
        assert store.has_unit(UnitRef("L0.mlp", unit))
    values = [float(t.get_attribute("title").split()[-1]) for t in tokens]
    peak = dash_duo.find_element("#probe-color-by").text.split("peak ")[1].rstrip(")")
    assert f"{max(values):+.3f}" == peak  # the tokens carry that unit's activations
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("L9N1", Keys.ENTER)  # a unit the store does not have: one line, the choice kept
    dash_duo.wait_for_contains_text("#probe-color-unit-status", "no source 'L9.mlp'")
    assert f"L0N{unit}" in dash_duo.find_element("#probe-color-by").text
    assert dash_duo.get_logs() == []


def test_probe_ranks_sae_features_beside_neurons(dash_duo, tiny_store, tmp_path, monkeypatch):
    monkeypatch.setenv("NEURODASH_HOME", str(tmp_path))
    start(dash_duo, tiny_store, "/probe")
    dash_duo.wait_for_contains_text(".nd-main", "neuron sources and 1 SAE of this store")
    run_probe(dash_duo, "def f(x):\n    return x + 1")
    links = dash_duo.driver.execute_script(
        "return [...document.querySelectorAll('#probe-top-units a')].map(a => a.getAttribute('href'))"
    )
    assert any("/unit/L1.sae" in href for href in links) and any(".mlp/" in href for href in links)
    assert dash_duo.get_logs() == []


def test_unit_page_downloads_its_examples(dash_duo, synthetic_store, tmp_path):
    dash_duo.driver.execute_cdp_cmd(
        "Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)}
    )
    start(dash_duo, synthetic_store, "/unit/L1.mlp/5")
    dash_duo.wait_for_text_to_equal(".nd-unit-header h1", "L1N5")
    dash_duo.find_element(".nd-downloads button:nth-of-type(2)").click()  # JSONL
    lines = wait_for_download(tmp_path / "L1.mlp-5.jsonl").decode().splitlines()
    assert lines and all(json.loads(line)["unit"] == "L1.mlp/5" for line in lines)
    assert dash_duo.get_logs() == []


def test_dead_features_start_hidden_and_links_lead_across(dash_duo, tmp_path):
    store = make_synthetic_store(tmp_path / "mixed.duckdb", n_layers=2, n_units=5, sae_layers=(1,))
    start(dash_duo, store)
    dash_duo.wait_for_text_to_equal("#units-count", "15 units")
    dash_duo.wait_for_text_to_equal("#units-shown", "14 units shown")  # L1F4 is dead
    assert "L1F4" not in [e.text for e in dash_duo.find_elements(".ag-row .nd-grid-link")]
    dash_duo.driver.get(dash_duo.server_url + "/unit/L1.mlp/2")
    feature = dash_duo.wait_for_element('a.nd-neighbor-link[href="/unit/L1.sae/3"]')
    titles = [e.text for e in dash_duo.find_elements(".nd-panel-title")]
    assert "FEATURES OF L1.SAE BEHIND THIS NEURON (SHARE OF ITS ACTIVATION MASS)" in titles  # CSS upper-cases
    feature.click()
    wait_for_path(dash_duo, "/unit/L1.sae/3")
    dash_duo.wait_for_element('a.nd-neighbor-link[href="/unit/L1.mlp/1"]')
    assert dash_duo.get_logs() == []
