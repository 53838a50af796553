"""The unit page's Maximize panel: the latest run drawn with the page (untrusted tokens as text), the job's
errors, and in headless Chromium a short run on the tiny Llama's store."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
from app_helpers import by_id, texts, token_rows
from synthetic import XSS_TOKENS, make_synthetic_store

from neurodash.app import create_app, ids
from neurodash.app.pages import unit
from neurodash.app.panels import maximize as maximize_panel
from neurodash.results import FoundPrompt, Frontier, frontier_from_json
from neurodash.storage.maximize import MaximizeResults
from neurodash.units import UnitRef

REF = UnitRef("L1.mlp", 5)


def frontier(activation: float, tokens=XSS_TOKENS[:3]) -> Frontier:
    prompts = (
        FoundPrompt(
            (1, 2, 3), tuple(tokens), "".join(tokens), activation / 2, 3.5, (0.1, 0.2, activation / 2)
        ),
        FoundPrompt((4, 5, 6), ("a", "\n", "b"), "a\nb", activation, 7.25, (0.0, -0.3, activation)),
    )
    return Frontier(REF, "synthetic", 3, 5, 0, 2.0, prompts, 12.0, {"batch": 96})


@pytest.fixture
def store_with_runs(tmp_path):
    path = make_synthetic_store(tmp_path / "s.duckdb", n_layers=2, n_units=8)
    results = MaximizeResults.beside(path)
    results.save(frontier(1.0))
    results.save(frontier(4.0))  # the latest: shown
    return path


def render(app, **kwargs):
    with app.server.test_request_context("/"):
        return unit.layout(**kwargs)


def test_the_page_draws_the_latest_run_at_once(store_with_runs):
    app = create_app(store_with_runs)
    page = render(app, source_id="L1.mlp", index="5")
    result = by_id(page, ids.MAXIMIZE_RESULT)
    shown = texts(result)
    assert any("Best activation 4.000 (2.00x the best corpus example)" in t for t in shown)
    assert "+4.000" in shown and "CE 7.25" in shown
    rows = token_rows(result)  # the newest first, each marked at its last token
    assert [row["tokens"] for row in rows] == [["a", "\n", "b"], list(XSS_TOKENS[:3])]
    assert rows[0]["acts"] == [0.0, -0.3, 4.0] and rows[0]["marked"] == 2
    figure = by_id(result, ids.MAXIMIZE_FIGURE).figure
    assert figure["data"][0]["y"] == [2.0, 4.0] and figure["data"][0]["x"] == [3.5, 7.25]
    assert figure["layout"]["shapes"][0]["y0"] == 2.0  # the best corpus example
    assert all("<" not in c for c in figure["data"][0]["customdata"])  # escaped for Plotly
    assert by_id(page, ids.CURRENT_UNIT).data == {"source_id": "L1.mlp", "unit": 5}

    other = render(app, source_id="L1.mlp", index="6")
    assert any("No maximization run" in t for t in texts(by_id(other, ids.MAXIMIZE_RESULT)))


def test_a_finished_run_is_shown_from_its_json():
    shown = texts(maximize_panel.show_data(frontier(4.0).to_json()))
    assert "+4.000" in shown and "+2.000" in shown
    assert frontier_from_json(frontier(4.0).to_json()).prompts == frontier(4.0).prompts


@pytest.mark.parametrize(
    "unit_ref, length, steps, message",
    [
        (None, 4, 2, "No unit."),
        (UnitRef("L1.mlp", 5), None, 3, "Give a length"),
        (UnitRef("L1.mlp", 5), 4, 0, "Give a length"),
        (UnitRef("L1.mlp", 99), 4, 2, "Cannot maximize: unit 99 is out of range"),
        (UnitRef("L1.mlp", 5), 99, 2, "Cannot maximize: --length"),
    ],
)
def test_the_job_explains_bad_input(store_with_runs, unit_ref, length, steps, message):
    data, status = maximize_panel.maximize_job(lambda _: None, str(store_with_runs), unit_ref, length, steps)
    assert data is None and status.startswith(message)
    assert len(MaximizeResults.beside(store_with_runs).all()) == 2  # nothing written


# --- in the browser, on the tiny Llama ------------------------------------------------------


@pytest.mark.browser
def test_maximize_in_the_browser(dash_duo, tiny_store, tmp_path):
    from app_screenshot import free_port
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from neurodash.storage import Store

    store = tmp_path / "tiny.duckdb"  # a copy: its results file is this test's own
    shutil.copy(tiny_store, store)
    with Store(store) as s:
        units = s.units_frame("L1.mlp")
    index = int(units.loc[units["max_act"].idxmax(), "unit"])
    dash_duo.start_server(create_app(store), port=free_port())
    dash_duo.driver.get(f"{dash_duo.server_url}/unit/L1.mlp/{index}")
    dash_duo.wait_for_contains_text(f"#{ids.MAXIMIZE_RESULT}", "No maximization run")
    for input_id, value in ((ids.MAXIMIZE_LENGTH, "4"), (ids.MAXIMIZE_STEPS, "3")):
        box = dash_duo.find_element(f"#{input_id}")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(value, Keys.TAB)
    dash_duo.find_element(f"#{ids.MAXIMIZE_RUN}").click()
    dash_duo.wait_for_contains_text(f"#{ids.MAXIMIZE_STATUS}", "Done in", timeout=120)
    dash_duo.wait_for_element(f"#{ids.MAXIMIZE_FIGURE} .scatterlayer .point")
    rows = dash_duo.find_elements(f"#{ids.MAXIMIZE_RESULT} .nd-tokens")
    assert rows and all(len(r.find_elements("css selector", "span")) == 4 for r in rows)
    runs = MaximizeResults.beside(store).all()
    assert len(runs) == 1 and runs[0].length == 4 and runs[0].steps == 3 and len(rows) == len(runs[0].prompts)
    assert dash_duo.get_logs() == []

    dash_duo.driver.refresh()  # the run is drawn with the page now
    dash_duo.wait_for_element(f"#{ids.MAXIMIZE_FIGURE} .scatterlayer .point")
    WebDriverWait(dash_duo.driver, 30).until(  # and neurodash.js has made its token rows
        lambda d: (
            len(d.find_elements("css selector", f"#{ids.MAXIMIZE_RESULT} .nd-tokens > span"))
            == 4 * len(runs[0].prompts)
        )
    )
    assert dash_duo.get_logs() == []


def test_an_unreadable_results_file_does_not_break_the_page(tmp_path):
    path = make_synthetic_store(tmp_path / "s.duckdb", n_layers=2, n_units=8)
    (tmp_path / "s.maximize.duckdb").write_text("not a database")
    page = render(create_app(path), source_id="L1.mlp", index="5")
    assert any(t.startswith("Previous runs cannot be shown") for t in texts(by_id(page, ids.MAXIMIZE_RESULT)))


def test_a_run_saved_while_the_app_is_up_shows_on_the_next_page(store_with_runs):
    """The page reads the results file again only when it has changed, but then it does."""
    app = create_app(store_with_runs)
    results = MaximizeResults.beside(store_with_runs)
    other = UnitRef("L1.mlp", 6)
    assert results.latest(other) is None and "Best activation" not in " ".join(
        texts(by_id(render(app, source_id="L1.mlp", index="6"), ids.MAXIMIZE_RESULT))
    )
    for best in (5.0, 6.0):
        results.save(dataclasses.replace(frontier(best), ref=other))
        shown = " ".join(texts(by_id(render(app, source_id="L1.mlp", index="6"), ids.MAXIMIZE_RESULT)))
        assert f"Best activation {best:.3f}" in shown
    assert max(p.activation for p in results.latest(REF).prompts) == 4.0, "the other unit's run is as it was"


def test_a_run_in_progress_shows_after_a_reload_with_the_time_left(store_with_runs, tmp_path, monkeypatch):
    import os
    import time

    from neurodash.app import running

    monkeypatch.setenv("NEURODASH_HOME", str(tmp_path / "home"))
    app = create_app(store_with_runs)
    job = running.key("maximize", store_with_runs, str(REF))
    running.report(job, 5, 20, time.time() - 10)  # this process: alive; 5 steps in 10 s, 15 to go
    page = render(app, source_id="L1.mlp", index="5")
    line = texts(by_id(page, ids.MAXIMIZE_RESULT))[0]
    assert line.startswith("A maximization run of this unit is in progress: step 5 of 20, about 3")
    assert "s left" in line
    assert by_id(page, ids.MAXIMIZE_WATCH).disabled is False
    assert by_id(render(app, source_id="L1.mlp", index="6"), ids.MAXIMIZE_WATCH).disabled is True

    with app.server.test_request_context("/"):
        shown, stop = maximize_panel.watch_run(str(store_with_runs), REF)
        assert not stop and "in progress" in " ".join(texts(shown[0]))
        running.finish(job)
        shown, stop = maximize_panel.watch_run(str(store_with_runs), REF)
        assert stop and any("Best activation 4.000" in t for s in shown for t in texts(s))

    stale = running.key("maximize", store_with_runs, "L1.mlp/6")
    (running.folder() / f"{stale}.json").write_text(
        f'{{"pid": {2**22 + os.getpid()}, "done": 1, "total": 2, "started": 0}}'
    )
    assert running.find(stale) is None  # its process is gone


def test_time_left_at_the_pace_so_far():
    from neurodash.app import running

    assert running.Running(0, 10, 0.0).seconds_left(5.0) is None
    assert running.Running(2, 10, 0.0).seconds_left(4.0) == pytest.approx(16.0)
    assert running.eta_text(16.0) == "about 16 s left" and running.eta_text(600.0) == "about 10 min left"
