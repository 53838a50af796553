"""Curated sets and the overview's download, end to end in headless Chromium (no console errors).

Each test writes its sets to a file of its own; the synthetic store is shared by the session.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest
from app_screenshot import free_port
from browser_helpers import wait_for_download, wait_for_path
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from neurodash.app import create_app
from neurodash.export import Selection, examples_frame
from neurodash.storage import Store
from neurodash.storage.sets import ExampleSets

pytestmark = pytest.mark.browser

HOSTILE = '<img src=x onerror="window.__xss=1">'


def keys(items: pd.DataFrame) -> list[tuple]:
    return list(items[["source_id", "unit", "bucket", "rank"]].itertuples(index=False, name=None))


def start(dash_duo, app, path: str, downloads: Path) -> None:
    dash_duo.driver.execute_cdp_cmd(
        "Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    dash_duo.start_server(app, port=free_port())
    dash_duo.driver.get(dash_duo.server_url + path)
    dash_duo.wait_for_element(".nd-main .nd-title")


def assert_inert(dash_duo) -> None:
    with pytest.raises(NoAlertPresentException):
        dash_duo.driver.switch_to.alert.text  # noqa: B018
    assert dash_duo.driver.execute_script("return window.__xss") is None
    assert dash_duo.driver.execute_script("return document.querySelectorAll('.nd-main img').length") == 0


def test_add_to_a_set_then_view_rename_download_remove_one_and_delete_it(dash_duo, synthetic_store, tmp_path):
    sets = ExampleSets(tmp_path / "sets.duckdb")
    start(dash_duo, create_app(synthetic_store, sets_file=sets.path), "/unit/L1.mlp/5", tmp_path)
    dash_duo.wait_for_text_to_equal(".nd-unit-header h1", "L1N5")
    dash_duo.find_element("#set-name").send_keys(HOSTILE)
    dash_duo.find_element("#set-note").send_keys(HOSTILE + " a note")
    dash_duo.find_elements(".nd-add")[0].click()  # top #0
    dash_duo.wait_for_text_to_equal("#set-feedback", f"added 1 example to {HOSTILE!r}")
    dash_duo.find_element("#set-add-top").click()
    dash_duo.wait_for_text_to_equal(
        "#set-feedback", f"added 19 examples to {HOSTILE!r}: 1 example was there already, with the new note"
    )
    assert [o.get_attribute("value") for o in dash_duo.find_elements("#set-names option")] == [HOSTILE]
    dash_duo.driver.execute_script("window.scrollTo(0, 0)")  # the header's link, not under the top bar
    dash_duo.find_element("#unit-next").click()
    dash_duo.wait_for_text_to_equal(".nd-unit-header h1", "L1N6")
    assert dash_duo.find_element("#set-name").get_attribute("value") == HOSTILE  # kept from unit to unit

    dash_duo.find_element('.nd-links a[href="/sets"]').click()
    wait_for_path(dash_duo, "/sets")
    dash_duo.wait_for_text_to_equal(".nd-sets-table tbody td", HOSTILE)
    assert dash_duo.find_element(".nd-sets-table tbody td:nth-child(2)").text == "20"
    dash_duo.find_element(".nd-set-link").click()
    dash_duo.wait_for_text_to_equal(".nd-set-title", HOSTILE)
    rows = dash_duo.find_elements(".nd-set-example")
    assert len(rows) == 20
    assert {n.text for n in dash_duo.find_elements(".nd-note")} == {HOSTILE + " a note"}
    assert {a.get_attribute("pathname") for a in dash_duo.find_elements(".nd-set-unit")} == {"/unit/L1.mlp/5"}
    assert_inert(dash_duo)

    rename = dash_duo.find_element("#sets-rename-input")
    dash_duo.clear_input(rename)
    rename.send_keys("dates" + Keys.ENTER)
    wait_for_path(dash_duo, "/sets?name=dates")
    dash_duo.wait_for_text_to_equal(".nd-set-title", "dates")
    assert [s.name for s in sets.all()] == ["dates"]

    dash_duo.find_element(".nd-set-actions .nd-downloads button:nth-of-type(2)").click()  # JSONL
    lines = wait_for_download(tmp_path / "dates.jsonl").decode().splitlines()
    with Store(synthetic_store) as store:
        want = examples_frame(store, Selection(set_name="dates"), sets_file=sets.path)
    assert [(r["unit"], r["bucket"], r["rank"], r["note"]) for r in map(json.loads, lines)] == list(
        zip(want["unit"], want["bucket"], want["rank"], want["note"], strict=True)
    )

    before = keys(sets.items("dates"))
    assert [m.text for m in dash_duo.find_elements(".nd-set-meta .nd-muted")] == [
        f"top #{r}" for r in range(20)
    ]
    dash_duo.find_elements(".nd-remove")[3].click()  # top #3
    dash_duo.wait_for_text_to_equal("#sets-feedback", "removed L1N5 top #3 from 'dates'")
    assert [m.text for m in dash_duo.find_elements(".nd-set-meta .nd-muted")] == [
        f"top #{r}" for r in range(20) if r != 3
    ]
    assert dash_duo.find_element(".nd-sets-table tbody td:nth-child(2)").text == "19"
    values_and_peaks = dash_duo.driver.execute_script(  # the browser-built token rows moved with their rows
        "return [...document.querySelectorAll('.nd-set-example')].map(r => "
        "[r.querySelector('.nd-value').textContent, r.querySelector('.nd-tok-max').title.split('  ').pop()])"
    )
    assert len(values_and_peaks) == 19 and all(value == peak for value, peak in values_and_peaks)
    assert len(before) == 20
    assert keys(sets.items("dates")) == [k for k in before if k != ("L1.mlp", 5, "top", 3)]

    dash_duo.find_element(".nd-danger").click()
    alert = WebDriverWait(dash_duo.driver, 5).until(lambda d: d.switch_to.alert)
    assert alert.text == "Delete the set 'dates' and its 19 examples? This cannot be undone."
    alert.accept()
    wait_for_path(dash_duo, "/sets")
    dash_duo.wait_for_contains_text(".nd-panel", "No sets yet.")
    assert sets.all() == []
    assert dash_duo.get_logs() == []


def test_overview_downloads_the_units_its_filter_leaves(dash_duo, synthetic_store, tmp_path):
    start(dash_duo, create_app(synthetic_store, sets_file=tmp_path / "sets.duckdb"), "/", tmp_path)
    dash_duo.wait_for_element(".ag-row .nd-grid-link")
    dash_duo.wait_for_text_to_equal("#units-shown", "120 units shown")
    unit_filter = dash_duo.find_element('.ag-floating-filter[aria-colindex="1"] input')
    unit_filter.send_keys("L1N1")  # contains: L1N1, L1N10 ... L1N19
    dash_duo.wait_for_text_to_equal("#units-shown", "11 units shown")
    dash_duo.find_element("#units-download-format input[value='parquet']").click()
    dash_duo.find_element("#units-download-button").click()
    got = pd.read_parquet(io.BytesIO(wait_for_download(tmp_path / "units-top.parquet")))
    shown = ["L1.mlp/1", *(f"L1.mlp/{u}" for u in range(10, 20))]
    with Store(synthetic_store) as store:
        want = examples_frame(store, Selection(units=shown, buckets=["top"]))
    assert list(got["unit"]) == list(want["unit"]) and list(got["rank"]) == list(want["rank"])
    assert [list(a) for a in got["acts"]] == [list(a) for a in want["acts"]]
    dash_duo.wait_for_text_to_equal("#units-download-status", f"11 units, {len(want)} examples as PARQUET")
    assert dash_duo.get_logs() == []


def test_add_to_set_confirms_where_the_click_was(dash_duo, synthetic_store, tmp_path):
    """The confirmation of "+ add to set" appears beside the button clicked (the feedback line is at
    the top of the page, out of sight once the reader has scrolled to an example)."""
    sets = ExampleSets(tmp_path / "sets.duckdb")
    start(dash_duo, create_app(synthetic_store, sets_file=sets.path), "/unit/L1.mlp/5", tmp_path)
    dash_duo.wait_for_text_to_equal(".nd-unit-header h1", "L1N5")
    dash_duo.find_element("#set-name").send_keys("near")
    button = dash_duo.find_elements(".nd-add")[6]
    dash_duo.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)
    button.click()
    dash_duo.wait_for_text_to_equal("#set-feedback", "added 1 example to 'near'")
    toast = WebDriverWait(dash_duo.driver, 5).until(
        lambda d: d.execute_script(
            "const t = document.querySelector('.nd-toast');"
            "return t && [t.textContent, t.getBoundingClientRect().toJSON()];"
        )
    )
    text, box = toast
    near = dash_duo.driver.execute_script("return arguments[0].getBoundingClientRect().toJSON()", button)
    assert text == "added 1 example to 'near'"
    gap_x = max(near["left"] - box["right"], box["left"] - near["right"], 0)
    gap_y = max(near["top"] - box["bottom"], box["top"] - near["bottom"], 0)
    assert (gap_x**2 + gap_y**2) ** 0.5 <= 100, (box, near)
    assert near["top"] > 300, "the button is well below the feedback line at the top"
    assert 0 <= box["top"] and box["bottom"] <= dash_duo.driver.execute_script("return innerHeight")
    assert dash_duo.get_logs() == []
