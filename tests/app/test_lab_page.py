"""The Lab page as plain functions on the tiny Llama's store: the settings' URL round trip, the form,
a saved run drawn from its URL (every figure, links to head and unit pages, text as text), the
downloads, bad input, and the unit page's Steer link."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from app_helpers import by_id, find, texts
from dash import dcc, no_update
from dash.exceptions import PreventUpdate

from neurodash import lab_figures
from neurodash.app import create_app, ids, routes
from neurodash.app.pages import lab as lab_page
from neurodash.app.pages import unit as unit_page
from neurodash.app.panels import lab_results
from neurodash.lab_run import LabRun, LabSettings, Steer
from neurodash.storage.lab import LabRuns
from neurodash.units import UnitRef

HOSTILE = "<img src=x onerror=alert(1)> A B"


@pytest.fixture(scope="module")
def app(tiny_store):
    return create_app(tiny_store)


@pytest.fixture(scope="module")
def saved(tiny_store, tiny_lab_run) -> int:
    return LabRuns.beside(tiny_store).save(tiny_lab_run)


def render(app, path: str, **kwargs):
    with app.server.test_request_context(path):
        return lab_page.layout(**kwargs)


def query_of(href: str) -> dict:
    return parse_qs(urlsplit(href).query, keep_blank_values=True)


def test_settings_round_trip_through_the_url():
    settings = LabSettings(
        ("A B A B A", HOSTILE, "x&y=z"),
        answers=(" B", "", ""),
        counterfactuals=(" C",),
        corrupted=("A C A C A",),
        corruption="random",
        ablation="zero",
        steer=(Steer("L1N5", 2.5), Steer("L0H1", -1.0)),
        steer_tokens=7,
    )
    href = routes.lab_href(settings.to_query(), run_id=4)
    query = query_of(href)
    assert query["run"] == ["4"]
    assert LabSettings.from_query(query) == LabSettings(**(settings.__dict__ | {"answers": (" B",)}))
    assert routes.lab_href() == "/lab"
    assert routes.lab_steer_href(UnitRef("L15.mlp", 631)) == "/lab?steer=L15.mlp%2F631%3D4"


def test_empty_page_offers_the_course_prompts(app):
    page = render(app, "/lab")
    assert by_id(page, ids.LAB_PROMPTS).value == "\n".join(lab_page.COURSE)
    assert by_id(page, ids.LAB_RUN_ID).data is None
    assert "No saved runs yet." in texts(page) or "Saved runs" in texts(page)


def test_a_bare_unit_to_steer_is_filled_in(app):
    page = render(app, "/lab?steer=L1N5", steer="L1N5")
    assert by_id(page, ids.LAB_STEER).value == "L1N5=4"


def test_bad_query_says_why(app):
    page = render(app, "/lab?steer=L1N5=abc", steer="L1N5=abc")
    assert "the steering coefficient 'abc' of L1N5 is not a number" in texts(page)


def test_a_saved_run_is_drawn_from_its_url(app, saved, tiny_lab_run):
    page = render(app, f"/lab?run={saved}", run=str(saved))
    assert by_id(page, ids.LAB_RUN_ID).data == saved
    shown = texts(page)
    assert "A B A B A" in shown and "X Y X Y X" in shown
    graphs = find(page, lambda c: isinstance(c, dcc.Graph))
    names = {g.id for g in graphs}
    for name in (
        "predictions",
        "logit_lens",
        "attribution_heads",
        "attribution_mlps",
        "patching_resid",
        "ablation_heads",
        "ablation_mlps",
        "patching_heads",
        "patching_mlps",
    ):
        assert f"lab-{name}" in names
    assert sum(g.id.startswith("lab-steering_sweep") for g in graphs) == 2
    hrefs = {c.href for c in find(page, lambda c: isinstance(c, dcc.Link))}
    assert routes.unit_href(UnitRef("L1.mlp", 5)) in hrefs  # the steered neuron
    assert routes.head_href(1, 2) in hrefs  # the steered head
    assert any(h.startswith(routes.HEAD_PREFIX) for h in hrefs - {routes.head_href(1, 2)})  # ranked heads
    run_links = [h for h in hrefs if h.startswith(routes.LAB + "?run=")]
    assert run_links and LabSettings.from_query(query_of(run_links[0])).prompts  # the saved runs list


def test_the_top_neurons_by_attribution_are_ablated_and_linked(tiny_lab_run):
    """The run ablates the 10 neurons with the largest direct attribution (largest first), each one
    linked to its unit page with the change in the metric; the CSV has a row per prompt and neuron."""
    a = tiny_lab_run.ablation
    assert len(a.neurons) == 10 and all(n.kind == "neuron" for n in a.neurons)
    assert a.neuron_effects.shape == (2, 10) and not np.isnan(a.neuron_effects).any()
    chips = find(lab_results.neuron_ablation(tiny_lab_run)[1], lambda c: isinstance(c, dcc.Link))
    assert [c.href for c in chips] == [
        routes.unit_href(UnitRef(f"L{n.layer}.mlp", n.index)) for n in a.neurons
    ]
    rows = [r for r in tiny_lab_run.csv_rows() if r["section"].startswith("ablation_") and "N" in r["item"]]
    assert len(rows) == 2 * 10


def test_missing_run_says_so(app, saved):
    page = render(app, "/lab?run=9999", run="9999")
    assert "There is no lab run '9999' beside this store." in texts(page)
    page = render(app, "/lab?run=x", run="x")
    assert "There is no lab run 'x' beside this store." in texts(page)


def test_prompt_and_attention_bodies(tiny_lab_run):
    body = lab_results.prompt_body(tiny_lab_run, 1)
    assert find(body[0], lambda c: isinstance(c, dcc.Graph))
    attention = lab_results.attention_body(tiny_lab_run, 0, 1, 2, back=2)
    assert {g.id for g in find(attention[0], lambda c: isinstance(c, dcc.Graph))} == {
        "lab-attention-1-2",
        "lab-attention_back-2",
    }


def test_every_figure_is_valid_plotly(tiny_lab_run):
    import plotly.graph_objects as go

    for name in lab_figures.FIGURES:
        fig = tiny_lab_run.figure(name, 1)
        assert isinstance(fig, go.Figure) and fig.data, name
    with pytest.raises(KeyError, match="no lab figure"):
        lab_figures.figure(tiny_lab_run, "nope")


def test_hostile_tokens_are_escaped_in_figures(tiny_lab_run):
    label = lab_figures.token_label("<b>x</b>")
    assert "<" not in label and "&lt;b&gt;" in label


def test_downloads(tiny_lab_run):
    data = lab_results.download(tiny_lab_run, "json")
    assert LabRun.from_json(json.loads(data["content"])).prompts == tiny_lab_run.prompts
    csv_file = lab_results.download(tiny_lab_run, "csv")
    assert csv_file["content"].splitlines()[0] == "section,prompt,item,layer,index,value,text"


def test_form_values_become_settings():
    s = lab_page.settings_from_form(
        "A B A B A\r\n1 2 1 2 1 \n  \n", " B\n", "", "A C A C A", "random", "zero", "L1N5=2, L0H1=1"
    )
    assert s.prompts == ("A B A B A", "1 2 1 2 1 ") and s.answers == (" B",) and s.corrupted == ("A C A C A",)
    assert s.steer == (Steer("L1N5", 2.0), Steer("L0H1", 1.0))


@pytest.mark.parametrize(
    ("form", "message"),
    [
        (("", "", "", "", None, None, ""), "give at least one prompt"),
        (("A B\n\nC D", "", "", "", None, None, ""), "prompt 2 is empty"),
        (("A B", "", "", "", None, None, "L1N5=big"), "'big' of L1N5 is not a number"),
        (("A B", " B\n C", "", "", None, None, ""), "2 answers for 1 prompts"),
    ],
)
def test_bad_form_is_one_message_and_nothing_runs(tiny_store, form, message):
    before = len(LabRuns.beside(tiny_store).list())
    href, status = lab_page.start(lambda _: None, str(tiny_store), *form)
    assert href is no_update and status.startswith("Cannot run the lab: ") and status.endswith(message)
    assert len(LabRuns.beside(tiny_store).list()) == before


def test_bad_input_for_the_model_is_one_message(tiny_store):
    before = len(LabRuns.beside(tiny_store).list())
    href, status = lab_page.start(
        lambda _: None, str(tiny_store), "A B A B A", " Bxyzzy", "", "", None, None, ""
    )
    assert href is no_update and "is not one token: it splits into" in status
    href, status = lab_page.start(
        lambda _: None, str(tiny_store), "A B A B A", "", "", "", None, None, "L7N1=1"
    )
    assert "no source 'L7.mlp'" in status
    assert len(LabRuns.beside(tiny_store).list()) == before


def test_the_job_saves_and_moves_to_the_run(tiny_store):
    progress = []
    href, status = lab_page.start(progress.append, str(tiny_store), "A B A B A", "", "", "", None, "zero", "")
    run_id = int(query_of(href)["run"][0])
    assert status.startswith(f"Run {run_id} done")
    assert query_of(href)["prompt"] == ["A B A B A"] and query_of(href)["ablation"] == ["zero"]
    assert progress[-1][2] == "Done"
    assert LabRuns.beside(tiny_store).get(run_id).settings.ablation == "zero"


def test_callbacks_without_a_run_do_nothing(tiny_store):
    with pytest.raises(PreventUpdate):
        lab_page._current_run(str(tiny_store), None)


def test_unit_page_links_to_the_lab(app):
    with app.server.test_request_context("/unit/L1.mlp/5"):
        page = unit_page.layout(source_id="L1.mlp", index="5")
    hrefs = {c.href for c in find(page, lambda c: isinstance(c, dcc.Link))}
    assert routes.lab_steer_href(UnitRef("L1.mlp", 5)) in hrefs
