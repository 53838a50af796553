"""The heads page, the head page and their callbacks, as plain functions over a synthetic store with heads."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from app_helpers import by_id, find, texts, token_rows, units_table_payload
from dash.exceptions import PreventUpdate
from synthetic import XSS_TOKENS

from neurodash.app import create_app, ids, shell, state
from neurodash.app.data import closest_heads, head_frame, standardised_scores
from neurodash.app.pages import head, heads, overview, unit
from neurodash.units import HEAD_METRICS, UnitRef


@pytest.fixture(scope="module")
def app(heads_store):
    return create_app(heads_store)


def build(app, layout, path: str = "/", **kwargs):
    with app.server.test_request_context(path):
        return layout(**kwargs)


def test_heads_page_has_a_heat_map_per_score_and_a_table_of_every_head(app):
    page = build(app, heads.layout, "/heads")
    figure = by_id(page, ids.HEADS_HEATMAP).figure
    heatmap = figure["data"][0]
    assert heatmap["y"] == [0, 1, 2] and heatmap["x"] == [0, 1, 2, 3]
    assert heatmap["text"][1][2] == "L1H2"
    options = [o["value"] for o in by_id(page, ids.HEADS_METRIC).options]
    assert options == list(HEAD_METRICS)  # in the schema's order, polysemanticity (neurons only) left out
    grid = by_id(page, ids.HEADS_GRID)
    assert len(grid.rowData) == 12 and {r["path"] for r in grid.rowData} >= {"/head/0/0", "/head/2/3"}
    assert {c["field"] for c in grid.columnDefs} >= {"ref", "max_act", *HEAD_METRICS}
    with app.server.test_request_context("/heads"):
        other = heads.show_metric("attn_entropy")
        values = head_frame(state.current().units).set_index("name")["attn_entropy"]
    assert other["data"][0]["z"][2][1] == pytest.approx(values["L2H1"], abs=1e-4)


def test_a_heat_map_click_opens_the_head():
    assert heads.open_head({"points": [{"x": 3, "y": 2, "z": 0.5, "text": "L2H3"}]}) == "/head/2/3"
    for bad in (None, {}, {"points": []}, {"points": [{"x": "1", "y": 1}]}, {"points": [{"x": -1, "y": 0}]}):
        with pytest.raises(PreventUpdate):
            heads.open_head(bad)


def test_a_store_without_heads_says_how_to_add_them(synthetic_store):
    page = build(create_app(synthetic_store), heads.layout, "/heads")
    assert any("no attention heads" in t and "--no-heads" in t for t in texts(page))


def test_head_page(app):
    page = build(app, head.layout, "/head/1/2", layer="1", head="2")
    shown = texts(page)
    assert "L1H2" in shown and "L1H1" in " ".join(shown) and "L1H3" in " ".join(shown)  # j / k
    assert by_id(page, ids.UNIT_NEXT).href == "/head/1/3" and by_id(page, ids.UNIT_PREV).href == "/head/1/1"
    rows = [r for r in token_rows(page) if r.get("mode") == "attention"]
    assert len(rows) >= 10
    for row in rows:
        assert row["marked"] is not None and all(w == 0 for w in row["acts"][row["marked"] + 1 :])
        assert set(XSS_TOKENS) <= set(row["tokens"])  # as data, built as text in the browser
    strips = by_id(page, ids.HEAD_SCORES).figure
    assert {t["x"][0] for t in strips["data"][1::2]} and len(strips["data"]) == 2 * len(HEAD_METRICS)
    assert by_id(page, ids.HEAD_LOGITS).figure["data"][0]["type"] == "bar"
    assert by_id(page, ids.HEAD_PATTERN).figure["data"][0]["type"] == "heatmap"
    assert "Heads with the closest scores" in shown  # no neighbours stored for synthetic heads
    links = [c.href for c in find(page, lambda c: getattr(c, "href", None) is not None)]
    assert "/unit/L1.mlp/0" in links and "/heads" in links


def test_a_heads_unit_address_shows_the_head_page(app):
    page = build(app, unit.layout, "/unit/L1.attn/2", source_id="L1.attn", index="2")
    assert "L1H2" in texts(page) and find(page, lambda c: getattr(c, "id", None) == ids.HEAD_PATTERN)


@pytest.mark.parametrize(("layer", "index"), [("9", "0"), ("1", "4"), ("x", "1"), ("1", "-1")])
def test_an_unknown_head_is_not_found(app, layer, index):
    page = build(app, head.layout, f"/head/{layer}/{index}", layer=layer, head=index)
    assert "Not found" in texts(page)
    with app.server.test_request_context("/"):
        assert head.resolve(state.current().store, layer, index) is None


def test_the_strip_follows_the_chosen_example(app):
    holder = {"source_id": "L1.attn", "unit": 2}
    with app.server.test_request_context("/head/1/2"):
        figure = head.show_example("top/3", holder)
        row = state.current().store.attention_rows(UnitRef("L1.attn", 2), ["top"])[3]
        with pytest.raises(PreventUpdate):
            head.show_example("top/x", holder)
    assert figure["data"][0]["z"][0] == [round(w, 4) for w in row.pattern]


def test_closest_heads_are_nearest_by_standardised_scores(app):
    with app.server.test_request_context("/"):
        frame = head_frame(state.current().units)
    near = closest_heads(frame, UnitRef("L0.attn", 0), list(HEAD_METRICS), k=3)
    assert len(near) == 3 and UnitRef("L0.attn", 0) not in [r for r, _ in near]
    assert [d for _, d in near] == sorted(d for _, d in near)
    z = standardised_scores(frame, list(HEAD_METRICS))
    assert closest_heads(frame, UnitRef("L0.attn", 0), list(HEAD_METRICS), k=3, z=z) == near


def test_head_pages_share_every_heads_scores_built_once(app):
    with app.server.test_request_context("/"):
        first = build(app, head.layout, "/head/0/1", layer="0", head="1")
        second = build(app, head.layout, "/head/2/3", layer="2", head="3")
        all_heads = state.current().once(head.AllHeads.of)
        assert state.current().once(head.AllHeads.of) is all_heads
    strips = [by_id(page, ids.HEAD_SCORES).figure["data"] for page in (first, second)]
    assert strips[0][0]["x"] == strips[1][0]["x"] == all_heads.values[all_heads.metrics[0]]
    assert strips[0][1]["text"] == ["L0H1"] and strips[1][1]["text"] == ["L2H3"]  # each page's own head


def test_jump_box_reads_a_head(app):
    with app.server.test_request_context("/"):
        assert shell.jump("L2H3") == ("/head/2/3", "")


def test_overview_lists_heads_with_neurons(app):
    page = build(app, overview.layout)
    payload = units_table_payload(app, page)
    kinds = {s["kind"]: s["href"] for s in payload["sources"]}
    assert kinds["head"].startswith("/head/") and "neuron" in kinds
    shown = texts(page)
    assert shown.index("L2.mlp") < shown.index("L0.attn")  # neurons first, then heads
    assert json.dumps(payload)  # JSON-ready
    density = np.frombuffer(base64.b64decode(payload["metrics"]["density"]), "<f4")
    source = np.frombuffer(base64.b64decode(payload["source"]), "<u2")
    is_head = np.array([payload["sources"][i]["kind"] == "head" for i in source])
    assert is_head.sum() == 12 and np.isnan(density[is_head]).all() and not np.isnan(density[~is_head]).any()
    grid = by_id(page, ids.UNITS_GRID)
    density_column = next(c for c in grid.columnDefs if c["field"] == "density")
    assert density_column["filterParams"]["includeBlanksInGreaterThan"]  # the dead filter keeps heads
    boxes = by_id(page, ids.LAYER_PLOTS).figure["data"]
    assert {t["name"] for t in boxes if t["yaxis"] == "y2"} == {"neuron"}  # no density box for heads


def test_a_heads_examples_go_into_a_set_as_any_units(heads_store, tmp_path):
    from neurodash.app.panels import sets as sets_panel
    from neurodash.storage import Store
    from neurodash.storage.sets import ExampleSets

    sets = ExampleSets.beside(heads_store, tmp_path / "heads.sets.duckdb")
    ref = UnitRef("L1.attn", 2)
    page = build(
        create_app(heads_store, tmp_path / "heads.sets.duckdb"), head.layout, "/head/1/2", layer="1", head="2"
    )
    buttons = find(
        page, lambda c: isinstance(getattr(c, "id", None), dict) and c.id["type"] == ids.SET_ADD_EXAMPLE
    )
    assert {(b.id["bucket"], b.id["rank"]) for b in buttons} >= {("top", 0), ("top", 1)}
    with Store(heads_store) as store:
        assert (
            sets_panel.add_to_set(sets, store, ref, "heads", None, ("top", 1)) == "added 1 example to 'heads'"
        )
        assert "added 19 examples" in sets_panel.add_to_set(sets, store, ref, "heads", None)


@pytest.mark.parametrize(
    ("path", "status"),
    [("/heads", 200), ("/head/1/2", 200), ("/unit/L1.attn/2", 200), ("/head/1/4", 404), ("/head/3/0", 404)],
)
def test_a_head_that_is_not_there_is_a_real_404(app, path, status):
    assert app.server.test_client().get(path).status_code == status
