"""The standalone HTML report in headless Chromium: tokens verbatim, nothing executed, no request.

The corpus carries tokens that would run script, load an image or a stylesheet if they were ever
parsed as markup; the report is checked as written, and again with its Content-Security-Policy
taken out, so the escaping alone is what keeps them inert.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from app_screenshot import chrome_options
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from small_store import make_small_store
from synthetic import XSS_TOKENS

from neurodash.export import Selection, export
from neurodash.html_report import CSP, token_display
from neurodash.storage import Store
from neurodash.storage.sets import ExampleSets
from neurodash.units import UnitRef

pytestmark = pytest.mark.browser

NOTE = '<img src=x onerror="window.__xss=1"> see <b>this</b>'


@pytest.fixture(scope="module")
def driver():
    options = chrome_options()
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    chrome = webdriver.Chrome(options=options)
    yield chrome
    chrome.quit()


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, list]:
    """A report of two units (every bucket) and a curated set with a hostile note; the expected rows."""
    folder = tmp_path_factory.mktemp("report")
    store_path = make_small_store(folder / "store.duckdb")
    refs = [UnitRef("L0.mlp", 1), UnitRef("L1.sae.res", 3)]
    with Store(store_path) as store:
        examples = [e for ref in refs for e in store.examples(ref)]
        out = export(store, Selection(units=[str(r) for r in refs]), "html", folder / "report.html")
        sets = ExampleSets(folder / "sets.duckdb")
        sets.add_example(store, "hostile", "L0N2", bucket="top", rank=0, note=NOTE)
        export(store, Selection(set_name="hostile"), "html", folder / "set.html", sets_file=sets.path)
    return out, examples


def open_report(driver, path: Path) -> None:
    driver.get_log("performance")  # drop earlier entries
    driver.get(path.as_uri())
    driver.find_element("css selector", "section.unit")


def assert_inert(driver, path: Path) -> None:
    """No alert, no script ran, no script or image element, and no request but the file itself."""
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018
    assert driver.execute_script("return window.__xss === undefined")
    assert driver.execute_script("return [document.scripts.length, document.images.length]") == [0, 0]
    assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0
    requests = [
        event["params"]["request"]["url"]
        for entry in driver.get_log("performance")
        if (event := json.loads(entry["message"])["message"])["method"] == "Network.requestWillBeSent"
    ]
    assert set(requests) <= {path.as_uri()}


def test_report_shows_every_token_verbatim(driver, report):
    path, examples = report
    open_report(driver, path)
    shown = driver.execute_script("return Array.from(document.querySelectorAll('.t'), e => e.textContent)")
    assert shown == [token_display(t) for e in examples for t in e.tokens]
    titles = driver.execute_script("return Array.from(document.querySelectorAll('.t'), e => e.title)")
    assert titles == [f"{t!r} {a:+.4f}" for e in examples for t, a in zip(e.tokens, e.acts)]
    page = driver.find_element("tag name", "body").text
    assert all(token in page for token in XSS_TOKENS)
    assert "test <b>model</b>" in page
    marked = driver.execute_script("return Array.from(document.querySelectorAll('.m'), e => e.textContent)")
    assert marked == [token_display(e.tokens[e.pos - e.start]) for e in examples]
    assert_inert(driver, path)


def test_report_colours_tokens_by_activation(driver, report):
    path, examples = report
    open_report(driver, path)
    colours = driver.execute_script(
        "return Array.from(document.querySelectorAll('.t'), e => getComputedStyle(e).backgroundColor)"
    )
    strongest = max(range(len(examples[0].acts)), key=lambda i: abs(examples[0].acts[i]))
    sign = examples[0].acts[strongest] > 0
    assert colours[strongest].startswith("rgba(240, 120, 20" if sign else "rgba(30, 110, 200")


def test_escaping_alone_keeps_the_corpus_inert(driver, report, tmp_path):
    path, examples = report
    bare = tmp_path / "no-csp.html"
    text = path.read_text(encoding="utf-8")
    assert CSP in text
    bare.write_text(text.replace(CSP, "default-src *"), encoding="utf-8")
    open_report(driver, bare)
    assert len(driver.find_elements("css selector", ".t")) == sum(len(e.tokens) for e in examples)
    assert_inert(driver, bare)


def test_a_set_report_shows_its_notes_as_text(driver, report):
    path = report[0].with_name("set.html")
    open_report(driver, path)
    assert driver.find_element("css selector", ".note").text == NOTE
    assert_inert(driver, path)
