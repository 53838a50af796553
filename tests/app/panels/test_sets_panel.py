"""Curated sets in the app and the overview's download, as plain functions over a synthetic store.

Each test gets its own sets file (the synthetic store is shared by the session).
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from contextvars import copy_context

import pandas as pd
import pytest
from app_helpers import by_id, find, texts, token_rows
from dash import dcc, html, no_update
from dash._callback_context import context_value
from dash._utils import AttributeDict
from dash.exceptions import PreventUpdate
from synthetic import XSS_TOKENS

from neurodash.app import create_app, current_unit, ids, routes, state
from neurodash.app.pages import overview, sets, unit
from neurodash.app.panels import set_manager, units_table
from neurodash.app.panels import sets as sets_panel
from neurodash.errors import NeurodashError
from neurodash.export import Selection, examples_frame
from neurodash.storage.sets import sets_path
from neurodash.units import UnitRef

L1N5 = UnitRef("L1.mlp", 5)
HOSTILE = '<img src=x onerror="window.__xss=1"> <b>bold</b>'


@pytest.fixture
def app(synthetic_store, tmp_path):
    return create_app(synthetic_store, sets_file=tmp_path / "sets.duckdb")


@pytest.fixture
def ctx(app):
    """A request to ``app``: ``state.current()`` works inside."""
    with app.server.test_request_context("/"):
        yield state.current()


def triggered(fn, prop_id: str, value, *args):
    """Call a callback as Dash would after ``prop_id`` changed to ``value``."""

    def run():
        context_value.set(AttributeDict(triggered_inputs=[{"prop_id": prop_id, "value": value}]))
        return fn(*args)

    return copy_context().run(run)


def current(ref: UnitRef) -> dict:
    """The data of the unit page's current-unit store for ``ref``."""
    return current_unit.holder(ref).data


def keys(frame: pd.DataFrame) -> list[tuple]:
    return list(frame[["source_id", "unit", "bucket", "rank"]].itertuples(index=False, name=None))


def decoded(sent: dict) -> bytes:
    return base64.b64decode(sent["content"])


def read_back(data: bytes, fmt: str) -> pd.DataFrame:
    if fmt == "csv":
        frame = pd.read_csv(io.BytesIO(data), keep_default_na=False)
        return frame.assign(tokens=frame["tokens"].map(json.loads), acts=frame["acts"].map(json.loads))
    if fmt == "jsonl":
        return pd.read_json(io.BytesIO(data), lines=True, dtype=False)
    return pd.read_parquet(io.BytesIO(data))


def same_rows(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns)
    assert len(got) == len(want)
    for column in ("unit", "bucket", "rank", "seq_id", "pos", "text", "note"):
        if column in want:
            assert [str(v) for v in got[column]] == [str(v) for v in want[column]], column
    assert [list(t) for t in got["tokens"]] == [list(t) for t in want["tokens"]]
    assert [pytest.approx(list(a)) for a in got["acts"]] == [list(a) for a in want["acts"]]


# --- the unit page --------------------------------------------------------------------------
def test_unit_page_has_a_plus_on_every_example_and_the_set_bar(app):
    with app.server.test_request_context("/unit/L1.mlp/5"):
        page = unit.layout("L1.mlp", "5")
    pluses = find(
        page, lambda c: isinstance(getattr(c, "id", None), dict) and c.id["type"] == ids.SET_ADD_EXAMPLE
    )
    assert len(pluses) == 45 and {p.id["bucket"] for p in pluses} >= {"top", "bottom", "q0.40"}
    assert by_id(page, ids.SET_NAME).list == ids.SET_NAMES
    assert by_id(page, ids.SET_NAMES).children is None  # filled by a callback: no sets file opened here


def test_add_one_example_then_all_top_examples_idempotently(ctx):
    store, sets_ = ctx.store, ctx.sets
    top = store.examples(L1N5, ["top"])
    one = sets_panel.add_to_set(sets_, store, L1N5, " dates ", "", ("top", 3))
    assert one == "added 1 example to 'dates'"
    assert keys(sets_.items("dates")) == [("L1.mlp", 5, "top", 3)]
    assert sets_.items("dates")["note"].isna().all()  # an empty note is no note
    assert sets_panel.add_to_set(sets_, store, L1N5, "dates", "years", None) == (
        f"added {len(top) - 1} examples to 'dates': 1 example was there already, with the new note"
    )
    items = sets_.items("dates")
    assert sorted(keys(items)) == sorted(("L1.mlp", 5, "top", e.rank) for e in top)
    assert set(items["note"]) == {"years"}
    again = sets_panel.add_to_set(sets_, store, L1N5, "dates", None, None)
    assert again == f"added 0 examples to 'dates': {len(top)} examples were there already"
    assert len(sets_.items("dates")) == len(top) and set(sets_.items("dates")["note"]) == {"years"}
    assert [o.value for o in sets_panel.name_options(sets_)] == ["dates"]


def test_adding_needs_a_name_and_a_real_example(ctx):
    with pytest.raises(NeurodashError, match="type a set name"):
        sets_panel.add_to_set(ctx.sets, ctx.store, L1N5, "  ", None, ("top", 0))
    with pytest.raises(NeurodashError, match="no example top #99"):
        sets_panel.add_to_set(ctx.sets, ctx.store, L1N5, "s", None, ("top", 99))
    assert ctx.sets.all() == []


def test_add_callback(app, ctx):
    plus = '{"bucket":"bottom","rank":1,"type":"set-add-example"}.n_clicks'
    with app.server.test_request_context("/unit/L1.mlp/5"):
        message, names = triggered(sets_panel.on_add, plus, 1, None, [1], "neg", "why?", current(L1N5))
        assert message.children == "added 1 example to 'neg'" and message.className == "nd-ok"
        assert [o.value for o in names] == ["neg"]
        message, _ = triggered(
            sets_panel.on_add, f"{ids.SET_ADD_TOP}.n_clicks", 1, 1, [], "", None, current(L1N5)
        )
        assert message.className == "nd-error" and "type a set name" in message.children
        with pytest.raises(PreventUpdate):  # the buttons of a newly shown unit, not a click
            triggered(sets_panel.on_add, plus, None, None, [None], "neg", None, current(UnitRef("L1.mlp", 6)))
        for nowhere in (None, {"source_id": "L1.mlp"}, current(UnitRef("L1.mlp", 99999))):
            with pytest.raises(PreventUpdate):  # no current unit, or one the store does not have
                triggered(sets_panel.on_add, plus, 1, None, [1], "neg", None, nowhere)
    assert keys(ctx.sets.items("neg")) == [("L1.mlp", 5, "bottom", 1)]
    assert list(ctx.sets.items("neg")["note"]) == ["why?"]


def test_app_keeps_its_sets_beside_the_store(synthetic_store, tmp_path):
    copy = tmp_path / "copy.duckdb"
    shutil.copy(synthetic_store, copy)
    app = create_app(copy)
    with app.server.test_request_context("/"):
        assert state.current().sets.path == sets_path(copy) == tmp_path / "copy.sets.duckdb"
        assert "kept in copy.sets.duckdb beside the store." in texts(sets.layout())[1]
    chosen = tmp_path / "elsewhere.duckdb"
    with create_app(copy, sets_file=chosen).server.test_request_context("/"):
        assert state.current().sets.path == chosen
        assert f"kept in {chosen}." in texts(sets.layout())[1]


# --- the sets page --------------------------------------------------------------------------
def fill(ctx) -> None:
    ctx.sets.add_top(ctx.store, "dates", L1N5, note=HOSTILE)
    ctx.sets.add_example(ctx.store, HOSTILE, "L0N2", bucket="bottom", rank=0)


def test_sets_page_lists_sets_with_counts_and_times(app, ctx):
    assert "No sets yet." in " ".join(texts(sets.layout()))
    fill(ctx)
    page = sets.layout()
    rows = find(page, lambda c: isinstance(c, html.Tr))[1:]
    assert [texts(r)[:2] for r in rows] == [[HOSTILE, "1"], ["dates", "20"]]  # by name; names as text
    links = find(page, lambda c: isinstance(c, dcc.Link) and c.className == "nd-set-link")
    assert links[1].href == "/sets?name=dates"
    assert links[0].href == routes.set_href(HOSTILE) and "<" not in links[0].href
    assert all(len(texts(r)[2]) == len("2024-01-01 00:00") for r in rows)


def test_a_sets_page_shows_its_examples_with_notes_and_unit_links(app, ctx):
    fill(ctx)
    page = sets.layout(name="dates")
    want = examples_frame(ctx.store, Selection(set_name="dates"), sets_file=ctx.sets.path)
    rows = find(page, lambda c: getattr(c, "className", None) == "nd-set-example")
    assert len(rows) == len(want) == 20
    links = [c.href for c in find(page, lambda c: isinstance(c, dcc.Link) and c.className == "nd-set-unit")]
    assert links == ["/unit/L1.mlp/5"] * 20
    notes = find(page, lambda c: getattr(c, "className", None) == "nd-note")
    assert [n.children for n in notes] == [HOSTILE] * 20  # a string child: React shows it as text
    (tokens,) = token_rows(rows[0])
    assert tokens["tokens"][1 : 1 + len(XSS_TOKENS)] == list(XSS_TOKENS)
    assert tokens["acts"][tokens["marked"]] == pytest.approx(want["value"][0], abs=1e-4)
    assert by_id(page, ids.SETS_SELECTED).data == "dates"
    assert "There is no set named " in texts(sets.layout(name="nope"))


def test_rename_and_delete(app, ctx):
    fill(ctx)
    assert set_manager.rename(ctx.sets, "dates", "  years ") == ("/sets?name=years", "")
    href, error = set_manager.rename(ctx.sets, "years", HOSTILE)
    assert href is no_update and "exists already" in error.children
    assert set_manager.delete(ctx.sets, "years") == ("/sets", "")
    assert [s.name for s in ctx.sets.all()] == [HOSTILE]
    href, error = set_manager.delete(ctx.sets, "years")
    assert href is no_update and "no set named 'years'" in error.children
    with app.server.test_request_context("/sets"):
        confirmed = f"{ids.SETS_DELETE}.submit_n_clicks"
        assert triggered(set_manager.on_change, confirmed, 1, None, None, 1, HOSTILE, HOSTILE) == (
            "/sets",
            "",
        )
        with pytest.raises(PreventUpdate):
            triggered(
                set_manager.on_change, f"{ids.SETS_RENAME}.n_clicks", None, None, None, None, "x", HOSTILE
            )
    assert ctx.sets.all() == []


def remove_buttons(page) -> list[dict]:
    return [
        c.id
        for c in find(page, lambda c: isinstance(getattr(c, "id", None), dict))
        if c.id["type"] == ids.SETS_REMOVE_EXAMPLE
    ]


def test_remove_one_example_from_a_set(app, ctx):
    fill(ctx)
    before = keys(ctx.sets.items("dates"))
    page = sets.layout(name="dates")
    buttons = remove_buttons(page)
    shown = examples_frame(ctx.store, Selection(set_name="dates"), sets_file=ctx.sets.path)
    assert [(b["source"], b["unit"], b["bucket"], b["rank"]) for b in buttons] == list(
        zip(shown["source_id"], shown["unit_index"], shown["bucket"], shown["rank"], strict=True)
    )  # one "×" per example shown, in the page's order
    gone = buttons[3]
    with app.server.test_request_context("/sets?name=dates"):
        prop = json.dumps(gone, sort_keys=True, separators=(",", ":")) + ".n_clicks"
        redrawn = html.Div(triggered(set_manager.on_remove, prop, 1, [None, None, None, 1], "dates"))
    assert keys(ctx.sets.items("dates")) == [k for k in before if k != ("L1.mlp", 5, "top", 3)]
    assert (gone["source"], gone["unit"], gone["bucket"], gone["rank"]) == ("L1.mlp", 5, "top", 3)
    assert by_id(redrawn, ids.SETS_FEEDBACK).children.children == "removed L1N5 top #3 from 'dates'"
    assert gone not in remove_buttons(redrawn) and len(remove_buttons(redrawn)) == 19
    table = find(redrawn, lambda c: isinstance(c, html.Tr))[1:]
    assert [texts(r)[:2] for r in table] == [[HOSTILE, "1"], ["dates", "19"]]
    assert "19 examples" in " ".join(texts(redrawn))

    again = set_manager.remove_example(ctx, "dates", L1N5, "top", 3)  # a second click on the same one
    assert again.className == "nd-error" and again.children == "L1N5 top #3 was not in 'dates'"
    gone_set = set_manager.remove_example(ctx, "years", L1N5, "top", 4)
    assert gone_set.className == "nd-error" and "no set named 'years'" in gone_set.children
    assert len(ctx.sets.items("dates")) == 19 and len(ctx.sets.items(HOSTILE)) == 1
    with pytest.raises(PreventUpdate):  # the buttons of a redrawn set appearing, not a click
        triggered(set_manager.on_remove, prop, None, [None] * 19, "dates")


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_set_download_round_trips(app, ctx, fmt):
    fill(ctx)
    sent, message = set_manager.download(ctx.store, ctx.sets, "dates", fmt)
    assert sent["filename"] == f"dates.{fmt}" and message == ""
    want = examples_frame(ctx.store, Selection(set_name="dates"), sets_file=ctx.sets.path)
    same_rows(read_back(decoded(sent), fmt), want)
    assert set(want["note"]) == {HOSTILE}


def test_set_download_html_and_names(app, ctx):
    fill(ctx)
    sent, _ = set_manager.download(ctx.store, ctx.sets, HOSTILE, "html")
    assert sent["filename"] == "img-src-x-onerror-window.__xss-1-b-bold-b.html"
    page = decoded(sent).decode()
    assert "<img src=x" not in page and "&lt;img src=x onerror=" in page
    with app.server.test_request_context("/sets"):
        button = '{"fmt":"jsonl","type":"sets-download-format"}.n_clicks'
        sent, _ = triggered(set_manager.on_download, button, 1, [None, 1, None, None], "dates")
        assert sent["filename"] == "dates.jsonl"
    ctx.sets.delete("dates")
    sent, error = set_manager.download(ctx.store, ctx.sets, "dates", "csv")
    assert sent is no_update and "no set named 'dates'" in error.children


# --- the overview's download of the units shown ---------------------------------------------
def test_overview_has_a_download_of_the_units_shown(app):
    with app.server.test_request_context("/"):
        page = overview.layout()
    assert by_id(page, ids.UNITS_DOWNLOAD_BUCKETS).options == ["top", "top and bottom", "quantiles", "all"]
    assert [o["value"] for o in by_id(page, ids.UNITS_DOWNLOAD_FORMAT).options] == [
        "csv",
        "jsonl",
        "parquet",
        "html",
    ]


@pytest.mark.parametrize(("fmt", "choice", "buckets"), [("csv", "top", ["top"]), ("parquet", "all", [])])
def test_overview_download_equals_examples_frame(ctx, fmt, choice, buckets):
    shown = ["L2.mlp/7", "L0.mlp/3", "L1.mlp/39"]  # as the grid sorted them
    sent, status = units_table.download_units(ctx.store, shown, fmt, choice)
    want = examples_frame(ctx.store, Selection(units=shown, buckets=buckets))
    assert (
        status.children == f"3 units, {len(want)} examples as {fmt.upper()}" and status.className == "nd-ok"
    )
    assert sent["filename"] == f"units-{choice}.{fmt}"
    same_rows(read_back(decoded(sent), fmt), want)


def test_overview_download_is_bounded(ctx, monkeypatch):
    every = [f"L{layer}.mlp/{u}" for layer in range(3) for u in range(40)]
    monkeypatch.setattr(units_table, "MAX_DOWNLOAD_EXAMPLES", 1000)
    sent, status = units_table.download_units(ctx.store, every, "csv", "top")
    assert sent is no_update and status.className == "nd-error"
    assert status.children.startswith("120 units, 2,400 examples: more than a CSV download holds (1,000)")
    assert "neurodash export" in status.children
    sent, status = units_table.download_units(ctx.store, [], "csv", "top")
    assert sent is no_update and "No unit is shown" in status.children
    with pytest.raises(PreventUpdate):
        units_table.download_units(ctx.store, every, "exe", "top")


def test_overview_download_callback(app):
    with app.server.test_request_context("/"):
        sent, status = units_table.on_download(
            {"clicks": 1, "units": ["L0.mlp/1"]}, "jsonl", "top and bottom"
        )
    lines = decoded(sent).decode().splitlines()
    assert {json.loads(line)["bucket"] for line in lines} == {"top", "bottom"}
    assert status.children.startswith("1 unit, ")
