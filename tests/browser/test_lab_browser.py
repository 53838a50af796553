"""The Lab page end to end in headless Chromium on the tiny Llama: a run started from a shared URL,
its plots drawn, the run reopened from its URL, hostile prompt text shown as text, the unit page's
Steer link; no console errors."""

from __future__ import annotations

import shutil
from urllib.parse import urlencode

import pytest
from app_screenshot import free_port
from browser_helpers import wait_for_path
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.support.ui import WebDriverWait

from neurodash.app import create_app

pytestmark = pytest.mark.browser
HOSTILE = "<img src=x onerror=alert(1)> A B A"


@pytest.fixture()
def store(tiny_store, tmp_path):
    """A copy of the tiny store, so the runs saved here stay here."""
    return shutil.copy(tiny_store, tmp_path / "tiny.duckdb")


def test_run_the_lab_and_reopen_it(dash_duo, store):
    dash_duo.start_server(create_app(store), port=free_port())
    query = urlencode([("prompt", HOSTILE), ("prompt", "X Y X Y X"), ("steer", "L1N5=2")])
    dash_duo.driver.get(f"{dash_duo.server_url}/lab?{query}")
    dash_duo.wait_for_element("#lab-prompts")
    assert dash_duo.find_element("#lab-prompts").get_attribute("value") == f"{HOSTILE}\nX Y X Y X"
    assert dash_duo.find_element("#lab-steer").get_attribute("value") == "L1N5=2"
    dash_duo.find_element("#lab-run").click()
    WebDriverWait(dash_duo.driver, 120).until(lambda d: "run=" in d.current_url)
    dash_duo.wait_for_element("#lab-attn-body .js-plotly-plot", timeout=30)
    plots = dash_duo.find_elements("#lab-results .js-plotly-plot")
    assert len(plots) >= 12  # predictions, lens, DLA x2, resid, attention x2, ablation x2, patching x2, sweep
    cells = [td.text for td in dash_duo.find_elements(".nd-lab-prompts td")]
    assert HOSTILE in cells  # the prompt, as text
    assert dash_duo.find_elements(".nd-main img") == []
    with pytest.raises(NoAlertPresentException):
        _ = dash_duo.driver.switch_to.alert.text
    assert dash_duo.find_elements("a[href^='/head/']")  # heads link to their pages
    assert dash_duo.find_elements("a[href='/unit/L1.mlp/5']")  # the steered neuron
    url = dash_duo.driver.current_url
    dash_duo.driver.get(url)  # reopened from its URL
    dash_duo.wait_for_element("#lab-attn-body .js-plotly-plot", timeout=30)
    assert dash_duo.find_element("#lab-prompts").get_attribute("value") == f"{HOSTILE}\nX Y X Y X"
    assert dash_duo.find_elements(".nd-lab-runs a")  # the saved runs list
    assert dash_duo.get_logs() == []


def test_bad_input_is_one_line(dash_duo, store):
    dash_duo.start_server(create_app(store), port=free_port())
    dash_duo.driver.get(
        f"{dash_duo.server_url}/lab?{urlencode([('prompt', 'A B A'), ('answer', ' Bxyzzy')])}"
    )
    dash_duo.wait_for_element("#lab-prompts")
    dash_duo.find_element("#lab-run").click()
    dash_duo.wait_for_contains_text("#lab-status", "is not one token: it splits into", timeout=60)
    assert "run=" not in dash_duo.driver.current_url
    assert dash_duo.get_logs() == []


def test_unit_page_steer_link_opens_the_lab(dash_duo, store):
    dash_duo.start_server(create_app(store), port=free_port())
    dash_duo.driver.get(dash_duo.server_url + "/unit/L1.mlp/5")
    dash_duo.wait_for_element(".nd-steer-link").click()
    wait_for_path(dash_duo, "/lab?steer=L1.mlp%2F5%3D4")
    dash_duo.wait_for_element("#lab-steer")
    assert dash_duo.find_element("#lab-steer").get_attribute("value") == "L1.mlp/5=4"
    assert dash_duo.get_logs() == []


def test_cancel_stops_a_run_and_the_model_worker_serves_the_next(dash_duo, store, tmp_path):
    """Cancel while the job waits to reach the model worker: the job ends, nothing is saved, the worker
    stays and runs the next job without a child left over."""
    import time

    import psutil
    from selenium.webdriver.common.by import By

    app = create_app(store)
    worker = app._background_manager.worker
    go, connect = tmp_path / "go", worker.connect

    def gated_connect(timeout: float = 120.0):
        """Jobs (forked from here, so they have this) wait for ``go``: the cancel lands mid-job."""
        while not go.exists():
            time.sleep(0.1)
        return connect(timeout)

    worker.connect = gated_connect
    dash_duo.start_server(app, port=free_port())
    dash_duo.driver.get(f"{dash_duo.server_url}/lab?{urlencode([('prompt', 'A B A B A')])}")
    dash_duo.wait_for_element("#lab-prompts")
    dash_duo.find_element("#lab-run").click()
    wait = WebDriverWait(dash_duo.driver, 120)
    wait.until(lambda d: d.find_element(By.ID, "lab-cancel").is_enabled())
    dash_duo.find_element("#lab-cancel").click()
    wait.until(lambda d: d.find_element(By.ID, "lab-run").is_enabled())
    assert "run=" not in dash_duo.driver.current_url
    go.touch()
    assert worker.pid is not None and psutil.Process(worker.pid).is_running()
    dash_duo.find_element("#lab-run").click()  # the next job, on the same worker (a loaded machine: slow)
    WebDriverWait(dash_duo.driver, 240).until(lambda d: "run=" in d.current_url)
    assert psutil.Process(worker.pid).is_running()
    _, alive = psutil.wait_procs(psutil.Process(worker.pid).children(), timeout=10)
    assert not alive  # every job's child has exited
    assert dash_duo.get_logs() == []
