"""Pages and callbacks as plain functions over a synthetic store; the app's set-up and safety."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import dash
import duckdb
import numpy as np
import pandas as pd
import pytest
from app_helpers import by_id, find, texts, token_rows, units_table_payload
from dash import dcc, html, no_update
from dash.exceptions import PreventUpdate
from synthetic import make_synthetic_store

from neurodash.app import create_app, ids, serve, shell, state
from neurodash.app.pages import not_found_404, overview, probe, unit
from neurodash.app.panels import downloads, probe_runs, sparsity, text_probe
from neurodash.app.render.formats import fraction_text
from neurodash.cli import main
from neurodash.errors import NeurodashError
from neurodash.storage import Store
from neurodash.units import SAE_FEATURE, Source, UnitRef

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def app(synthetic_store):
    return create_app(synthetic_store)


def render(app, layout, path: str = "/", **kwargs):
    """A page's layout, built as in a request to ``path`` on ``app``."""
    with app.server.test_request_context(path):
        return layout(**kwargs)


def test_overview(app):
    page = render(app, overview.layout)
    assert {"model", "synthetic", "units", "120", "tokens seen"} <= set(texts(page))
    grid = by_id(page, ids.UNITS_GRID)
    fields = [c["field"] for c in grid.columnDefs]
    assert fields[:3] == ["ref", "source", "layer"] and "polysemanticity" in fields and "density" in fields
    payload = units_table_payload(app, page)
    assert payload["n"] == 120 and set(payload["metrics"]) >= {"max_act", "density", "polysemanticity"}
    figure = by_id(page, ids.LAYER_PLOTS).figure
    assert {t["yaxis"] for t in figure["data"]} == {"y", "y2", "y3"}  # max act, density, the score


def test_unit_page(app):
    page = render(app, unit.layout, "/unit/L1.mlp/5", source_id="L1.mlp", index="5")
    assert "L1N5" in texts(page)
    assert by_id(page, ids.PERMALINK).children == "http://localhost/unit/L1.mlp/5"
    assert (
        by_id(page, ids.UNIT_PREV).href == "/unit/L1.mlp/4"
        and by_id(page, ids.UNIT_NEXT).href == "/unit/L1.mlp/6"
    )
    examples = find(page, lambda c: getattr(c, "className", None) == "nd-example")
    assert len(examples) == 45
    rows = [row for example in examples for row in token_rows(example)]
    assert len(rows) == 45 and all(abs(r["acts"][r["marked"]]) == max(map(abs, r["acts"])) for r in rows)
    neighbours = [
        c.href for c in find(page, lambda c: isinstance(c, dcc.Link) and "nd-neighbor-link" in c.className)
    ]
    assert neighbours[:2] == ["/unit/L1.mlp/6", "/unit/L1.mlp/7"]
    assert by_id(page, ids.LOGITS).figure["data"][0]["type"] == "bar"
    assert by_id(page, ids.HISTOGRAM).figure["layout"]["yaxis"]["type"] == "log"
    assert "polysemanticity" in texts(page)


def test_unit_page_ends_run_on_to_the_next_source(app):
    page = render(app, unit.layout, source_id="L0.mlp", index="39")
    assert by_id(page, ids.UNIT_NEXT).href == "/unit/L1.mlp/0"
    first = render(app, unit.layout, source_id="L0.mlp", index="0")
    assert isinstance(by_id(first, ids.UNIT_PREV), html.Span)  # no link before the first unit


@pytest.mark.parametrize(
    ("source_id", "index", "hint"),
    [
        ("L9.mlp", "1", "Its sources are L0.mlp, L1.mlp, L2.mlp."),
        ("L0.mlp", "40", "L0.mlp has units 0 to 39."),
        ("L0.mlp", "x", "L0.mlp has units 0 to 39."),
        (None, None, "Its sources are L0.mlp, L1.mlp, L2.mlp."),
    ],
)
def test_unknown_unit_is_not_found(app, source_id, index, hint):
    page = render(app, unit.layout, source_id=source_id, index=index)
    assert "Not found" in texts(page)
    assert f"This store has no unit {source_id}/{index}." in texts(page)
    assert hint in texts(page)


def test_not_found_page(app):
    assert "There is no page at this address." in texts(render(app, not_found_404.layout))


@pytest.mark.parametrize(
    ("typed", "path", "error"),
    [
        ("L2N3", "/unit/L2.mlp/3", ""),
        (" l0n7 ", "/unit/L0.mlp/7", ""),
        ("L1.mlp/39", "/unit/L1.mlp/39", ""),
        ("", no_update, ""),
        ("hello", "/?q=hello", ""),  # not a unit reference: find units that peak on it
        (" import", "/?q=+import", ""),
        ("L0N40", no_update, "unit 40 is out of range for L0.mlp (0..39)"),
        ("L7N1", no_update, "no source 'L7.mlp' in this store"),
    ],
)
def test_jump_box(app, typed, path, error):
    with app.server.test_request_context("/"):
        got_path, got_error, box = shell.on_jump(1, typed)
    assert got_path == path
    assert got_error.startswith(error)
    assert box == ("" if path is not no_update else no_update)  # the box clears after a jump


def test_probe_page_config(app):
    page = render(app, probe.layout)
    config = by_id(page, ids.PROBE_CONFIG).data
    assert config == {
        "model": "synthetic",
        "keep_bos": False,
        "hooks": {f"blocks.{i}.mlp.hook_post": f"L{i}.mlp" for i in range(3)},
        "saes": [],
        "attention": True,
    }
    box = by_id(page, ids.PROBE_TEXT)
    assert box.value == "" and box.placeholder  # empty, with a hint (typed text is the text)
    assert by_id(page, ids.PROBE_RESULT).data is None


@pytest.fixture
def fake_model(monkeypatch, tmp_path):
    """``precompute.probe`` replaced by a stub: two tokens, unit 3 of L1 firing on the second, unit 7 of
    L2 on the first; runs are saved under ``tmp_path``."""
    monkeypatch.setenv("NEURODASH_HOME", str(tmp_path))
    calls = []

    def probe_text(model, text, hooks, keep_bos=False, attention=False, saes=()):
        calls.append((model, text, hooks, keep_bos))
        acts = {h: np.zeros((2, 40), dtype=np.float32) for h in hooks}
        acts["blocks.1.mlp.hook_post"][1, 3] = 5.0
        acts["blocks.2.mlp.hook_post"][0, 7] = 0.25
        return ["Hello", " world"], acts

    stub = types.SimpleNamespace(
        cached_model=lambda name: calls.append(("load", name)),
        probe_text=probe_text,
        avoid_inherited_thread_pool=lambda: calls.append("one thread"),
    )
    monkeypatch.setitem(sys.modules, "precompute.live.probe", stub)
    return calls


def test_probe_job(app, fake_model):
    config = by_id(render(app, probe.layout), ids.PROBE_CONFIG).data
    progress = []
    summary, status = text_probe.probe_job(progress.append, "Hello world", config, state_of(app).unit_max)
    assert status == "2 tokens probed."
    assert [p[2] for p in progress] == ["Running synthetic…", "Ranking units…"]
    assert fake_model[-1][:2] == ("synthetic", "Hello world")
    assert summary["top"][0][:3] == ["L1.mlp", 3, 5.0] and summary["top"][0][5] == 1
    assert summary["text"] == "Hello world"
    saved = probe_runs.load(summary["key"])  # the run has an address: /probe?run=KEY
    assert saved == json.loads(json.dumps(summary))
    assert probe_runs.run_href(summary["key"]) == f"/probe?run={summary['key']}"


def test_probe_page_shows_a_saved_run(app, fake_model):
    summary = probe_result(app, fake_model)
    page = render(app, probe.layout, f"/probe?run={summary['key']}", run=summary["key"])
    assert by_id(page, ids.PROBE_TEXT).value == "Hello world"
    assert by_id(page, ids.PROBE_RESULT).data["key"] == summary["key"]
    assert "2 tokens probed." in texts(page)
    gone = render(app, probe.layout, "/probe?run=" + "0" * 32, run="0" * 32)
    assert by_id(gone, ids.PROBE_RESULT).data is None and by_id(gone, ids.PROBE_TEXT).value == ""
    assert any("no longer kept" in t for t in texts(gone))


@pytest.mark.parametrize("torch_loaded", [True, False])
def test_probe_job_runs_one_thread_where_forked_from_torch(app, fake_model, monkeypatch, torch_loaded):
    """A job forked from a process that had used torch's thread pool would hang in it (as in tests)."""
    import precompute.live.cache as cache

    monkeypatch.setattr(cache, "avoid_inherited_thread_pool", lambda: fake_model.append("one thread"))
    if torch_loaded:
        monkeypatch.setitem(sys.modules, "torch", sys.modules.get("torch", types.ModuleType("torch")))
    else:
        monkeypatch.delitem(sys.modules, "torch", raising=False)
    config = by_id(render(app, probe.layout), ids.PROBE_CONFIG).data
    text_probe.probe_job(lambda _: None, "Hello world", config, state_of(app).unit_max)
    assert ("one thread" in fake_model) == torch_loaded


def test_probe_job_refuses_empty_text_and_reports_errors(app, monkeypatch):
    config = by_id(render(app, probe.layout), ids.PROBE_CONFIG).data
    assert text_probe.probe_job(print, "  ", config, {}) == (None, "Type or paste a text first.")
    assert (
        text_probe.probe_job(print, "x", {**config, "hooks": {}}, {})[1]
        == "This store has no neuron or SAE feature sources to probe."
    )

    def fail(*_args, **_kwargs):
        raise NeurodashError("cannot load model 'synthetic': offline")

    stub = types.SimpleNamespace(cached_model=fail, probe_text=fail, avoid_inherited_thread_pool=lambda: None)
    monkeypatch.setitem(sys.modules, "precompute.live.probe", stub)
    assert text_probe.probe_job(lambda _: None, "x", config, {}) == (
        None,
        "Cannot probe: cannot load model 'synthetic': offline",
    )


def test_probe_job_leaves_out_an_sae_that_cannot_load(app, fake_model, monkeypatch):
    """The neurons are still probed, and the status says why the features are not."""
    stub = sys.modules["precompute.live.probe"]
    neurons_only = stub.probe_text

    def probe_text(model, text, hooks, keep_bos=False, attention=False, saes=()):
        if saes:
            raise NeurodashError("cannot load SAE sae-L1: no such folder")
        return neurons_only(model, text, hooks, keep_bos, attention)

    monkeypatch.setattr(stub, "probe_text", probe_text)
    config = by_id(render(app, probe.layout), ids.PROBE_CONFIG).data | {"saes": ["L1.sae"]}
    sae = Source("L1.sae", "synthetic", "blocks.1.mlp.hook_post", SAE_FEATURE, 1, 8, 100, "sae-L1")
    summary, status = text_probe.probe_job(print, "x", config, state_of(app).unit_max, {"L1.sae": sae})
    assert status == "2 tokens probed. SAE features left out: cannot load SAE sae-L1: no such folder"
    assert summary["top"][0][:2] == ["L1.mlp", 3]


def state_of(app) -> state.AppState:
    return app.server.extensions[state.EXTENSION]


def probe_result(app, fake_model) -> dict:
    config = by_id(render(app, probe.layout), ids.PROBE_CONFIG).data
    return text_probe.probe_job(lambda _: None, "Hello world", config, state_of(app).unit_max)[0]


def test_show_probe_result(app, fake_model):
    result = probe_result(app, fake_model)
    with app.server.test_request_context("/probe"):
        top, token_units, options, choice = text_probe.show_result(result)
    assert find(top, lambda c: isinstance(c, dcc.Link))[0].href == "/unit/L1.mlp/3"
    assert "' world'" in texts(token_units)  # the strongest token
    assert (
        options[0] == {"label": "L1N3  (peak +5.000)", "value": "L1.mlp/3"}
        and options[-1]["value"] == text_probe.STRONGEST
    )
    assert choice == "L1.mlp/3"


def test_probe_tokens_coloured_by_the_chosen_unit(app, fake_model):
    result = probe_result(app, fake_model)
    (row,) = token_rows(text_probe.colour_tokens("L1.mlp/3", result))  # 0 on "Hello", 5.0 on " world"
    assert row["tokens"] == ["Hello", " world"] and row["acts"] == [0.0, 5.0] and row["marked"] == 1
    (strongest,) = token_rows(text_probe.colour_tokens(text_probe.STRONGEST, result))
    assert strongest["marked"] == 1 and strongest["acts"][1] == strongest["max_abs"]
    assert text_probe.colour_tokens(None, result) is None


def test_probe_tokens_coloured_by_any_unit(app, fake_model):
    """Not only the top units: any unit the probe read, typed, read back from the saved run."""
    result = probe_result(app, fake_model)
    unit = next(u for u in range(40) if ["L0.mlp", u] not in [e[:2] for e in result["top"]])
    assert probe_runs.unit_acts(result, UnitRef("L0.mlp", unit)) == [0.0, 0.0]
    assert probe_runs.unit_acts(result, UnitRef("L1.mlp", 3)) == [0.0, 5.0]
    assert probe_runs.unit_acts(result, UnitRef("L0.mlp", 40)) is None  # not a unit the probe read
    with app.server.test_request_context("/probe"):
        options = text_probe.show_result(result)[2]
        new_options, choice, message = text_probe.choose_any_unit(1, f" L0N{unit} ", result, options)
        assert (choice, message) == (f"L0.mlp/{unit}", "")
        assert {"label": f"L0N{unit}  (peak +0.000)", "value": f"L0.mlp/{unit}"} in new_options
        assert new_options[-1]["value"] == text_probe.STRONGEST
        (row,) = token_rows(text_probe.colour_tokens(choice, result))
        assert row["acts"] == [0.0, 0.0]
        (row,) = token_rows(text_probe.colour_tokens("L2.mlp/7", result))
        assert row["acts"] == [0.25, 0.0] and row["marked"] == 0
        assert text_probe.choose_any_unit(1, "L9N1", result, options)[2] == "no source 'L9.mlp' in this store"
        assert text_probe.choose_any_unit(1, "L0N5", None, options)[2] == "Run the probe first."


def test_select_probe_token(app, fake_model):
    result = probe_result(app, fake_model)
    with app.server.test_request_context("/probe"):
        panel = text_probe.select_token({"index": 0, "at": 1}, result)
        assert "'Hello'" in texts(panel) and " at position 0" in texts(panel)
        for nothing in (None, {"index": 2, "at": 2}):  # nothing clicked yet; a stale index
            with pytest.raises(PreventUpdate):
                text_probe.select_token(nothing, result)


def test_apps_in_one_process_keep_their_own_store(tmp_path, app):
    other = create_app(make_synthetic_store(tmp_path / "other.duckdb", n_layers=1, n_units=7))
    assert "7" in texts(render(other, overview.layout))
    assert "120" in texts(render(app, overview.layout))
    assert sorted(dash.page_registry) == [
        f"neurodash.app.pages.{m}"
        for m in ("head", "heads", "lab", "not_found_404", "overview", "probe", "sets", "unit")
    ]


def test_store_is_opened_read_only(app):
    with pytest.raises(duckdb.Error, match="read-only"):
        state_of(app).store.sql("CREATE TABLE intruder (a INTEGER)")


def test_serve_binds_localhost_by_default(monkeypatch, synthetic_store):
    from neurodash.app import server

    bound, runs = [], []
    monkeypatch.setattr(
        server, "bind_waitress", lambda app, host, port, threads: bound.append((host, port)) or "B"
    )
    monkeypatch.setattr(server, "run_waitress", runs.append)
    monkeypatch.setattr(server, "IdleTrim", lambda app: None)
    serve(synthetic_store)
    assert bound == [("127.0.0.1", 8050)] and runs == ["B"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p, "no store at"),
        (lambda p: p.mkdir() or p, "no store at"),
        (lambda p: p.write_bytes(b"not a database at all" * 100) and p, "is not a readable neurodash store"),
    ],
)
def test_serve_explains_a_missing_or_unreadable_store(tmp_path, capsys, make, message):
    path = make(tmp_path / "store.duckdb")
    assert main(["serve", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_serving_never_imports_torch(synthetic_store):
    code = (
        "import sys\n"
        "from neurodash.app import create_app\n"
        "from neurodash.app.pages import overview, unit, probe, not_found_404\n"
        f"app = create_app({str(synthetic_store)!r})\n"
        "with app.server.test_request_context('/'):\n"
        "    overview.layout(); unit.layout(source_id='L0.mlp', index='1'); probe.layout(); not_found_404.layout()\n"
        "print(sorted(m for m in ('torch', 'precompute', 'transformer_lens') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


def test_a_store_with_sae_features(tmp_path):
    mixed_path = make_synthetic_store(
        tmp_path / "mixed.duckdb", n_layers=2, n_units=5, sae_layers=(1,), score_metrics=("polysemanticity",)
    )
    mixed = create_app(mixed_path)
    page = render(mixed, overview.layout)
    assert "kind" in [c["field"] for c in by_id(page, ids.UNITS_GRID).columnDefs]
    assert units_table_payload(mixed, page)["sources"][-1]["prefix"] == "L1F"
    feature = render(mixed, unit.layout, source_id="L1.sae", index="3")
    assert "L1F3" in texts(feature) and by_id(feature, ids.UNIT_PREV).href == "/unit/L1.sae/2"
    assert _link_hrefs(feature, "L1.sae") == ["/unit/L1.mlp/3", "/unit/L1.mlp/2", "/unit/L1.mlp/1"]
    assert any("this feature writes to" in t for t in texts(feature))
    neuron = render(mixed, unit.layout, source_id="L1.mlp", index="4")
    assert _link_hrefs(neuron, "L1.mlp") == ["/unit/L1.sae/4", "/unit/L1.sae/0", "/unit/L1.sae/1"]
    assert {"50.0%", "30.0%", "20.0%"} <= set(texts(neuron))
    behind = find(neuron, lambda c: isinstance(c, dcc.Link) and "nd-strong" in (c.className or ""))
    assert [(c.children, c.href) for c in behind] == [
        ("L1F4", "/unit/L1.sae/4"),
        ("L1F0", "/unit/L1.sae/0"),
        ("L1F1", "/unit/L1.sae/1"),
        ("L1F1", "/unit/L1.sae/1"),  # beside them, the features behind its strong firing
        ("L1F4", "/unit/L1.sae/4"),
    ]
    assert {"whole mass", "when it fires strongly (activation-weighted)"} <= set(texts(neuron))
    assert any(t.startswith(" · 70.0% of its strong firing") for t in texts(neuron))
    store = Store(mixed_path)
    strongest = store.examples(UnitRef("L1.sae", 4), ["top"])[0]
    assert any(
        t.startswith(
            f" · 50.0% of this neuron's activation mass · its strongest example, {strongest.value:+.3f}"
        )
        for t in texts(neuron)
    ), "each feature with its own strongest example"
    assert not find(feature, lambda c: isinstance(c, dcc.Link) and "nd-strong" in (c.className or ""))
    assert not _link_hrefs(render(mixed, unit.layout, source_id="L0.mlp", index="4"), "L0.mlp"), (
        "no SAE on layer 0"
    )
    dead = render(mixed, unit.layout, source_id="L1.sae", index="4")
    assert any(t.startswith("Dead: this unit never fired") for t in texts(dead))
    assert not any(t.startswith("Dead:") for t in texts(feature))
    assert (
        by_id(render(mixed, unit.layout, source_id="L1.mlp", index="4"), ids.UNIT_NEXT).href
        == "/unit/L1.sae/0"
    )
    with mixed.server.test_request_context("/"):
        assert shell.on_jump(1, "L1F2") == ("/unit/L1.sae/2", "", "")
    hooks = by_id(render(mixed, probe.layout), ids.PROBE_CONFIG).data["hooks"]
    assert list(hooks.values()) == ["L0.mlp", "L1.mlp"]  # the probe reads neurons only


def test_a_store_without_strong_links_shows_the_whole_mass_only(tmp_path):
    path = make_synthetic_store(
        tmp_path / "old.duckdb", n_layers=2, n_units=5, sae_layers=(1,), score_metrics=("polysemanticity",)
    )
    with duckdb.connect(str(path)) as con:
        con.execute("DROP TABLE links_strong")
    neuron = render(create_app(path), unit.layout, source_id="L1.mlp", index="4")
    behind = find(neuron, lambda c: isinstance(c, dcc.Link) and "nd-strong" in (c.className or ""))
    assert [c.href for c in behind] == ["/unit/L1.sae/4", "/unit/L1.sae/0", "/unit/L1.sae/1"]
    assert "whole mass" not in texts(neuron) and not any("strong firing" in t for t in texts(neuron))


def _link_hrefs(page, own: str) -> list[str]:
    """The units of other sources than ``own`` that a page links to (through an SAE decoder)."""
    links = [
        c.href for c in find(page, lambda c: isinstance(c, dcc.Link) and "nd-neighbor-link" in c.className)
    ]
    return [href for href in links if href.split("/")[2] != own]


def test_download_examples_round_trips(synthetic_store):
    store = Store(synthetic_store)
    sent = downloads.download_examples(store, UnitRef("L1.mlp", 5), "csv")
    assert sent["filename"] == "L1.mlp-5.csv"
    frame = pd.read_csv(io.BytesIO(base64.b64decode(sent["content"])), keep_default_na=False)
    examples = store.examples(UnitRef("L1.mlp", 5))
    assert len(frame) == len(examples)
    assert [json.loads(a) for a in frame["acts"]] == [list(e.acts) for e in examples]
    for bad in (UnitRef("L1.mlp", 99999), None, UnitRef("nope", 1)):
        with pytest.raises(PreventUpdate):
            downloads.download_examples(store, bad, "csv")
    with pytest.raises(PreventUpdate):
        downloads.download_examples(store, UnitRef("L1.mlp", 5), "xlsx")


def test_strongest_examples_are_each_units_top_example(tmp_path):
    path = make_synthetic_store(tmp_path / "m.duckdb", n_layers=2, n_units=5, sae_layers=(1,))
    store = Store(path)
    refs = [UnitRef("L1.sae", 3), UnitRef("L0.mlp", 2), UnitRef("L1.sae", 0), UnitRef("L0.mlp", 99)]
    found = store.strongest_examples(refs)
    assert set(found) == set(refs[:3]), "a unit without examples is left out"
    for ref in refs[:3]:
        assert found[ref] == store.examples(ref, ["top"])[0]
    assert store.strongest_examples([]) == {}


def test_search_from_the_overview_and_the_address(app):
    from neurodash.app.panels import search

    with Store(app.server.extensions["neurodash"].store.path) as store:
        token = store.examples(UnitRef("L2.mlp", 5), ["top"])[0].max_token
    with app.server.test_request_context("/"):
        shown = html.Div(search.on_search(token, []))
        hrefs = [link.href for link in find(shown, lambda c: isinstance(c, dcc.Link))]
        assert "/unit/L2.mlp/5" in hrefs
        assert search.on_search("", []) == [] and search.on_search("no such token", ["substring"])
    page = render(app, overview.layout, q=token)
    assert by_id(page, ids.SEARCH_INPUT).value == token
    assert "/unit/L2.mlp/5" in [link.href for link in find(page, lambda c: isinstance(c, dcc.Link))]


def test_relative_frequencies_show_where_the_store_has_them(tmp_path):
    """``freq_10`` / ``freq_50`` (fractions of tokens above 10% / 50% of the unit's max), when a store has
    them: per-layer plots on the overview, percentages in the grid and on the unit page."""
    from neurodash.app.panels import units_table

    path = make_synthetic_store(
        tmp_path / "f.duckdb", n_layers=2, n_units=6, score_metrics=("freq_10", "freq_50", "polysemanticity")
    )
    app = create_app(path)
    page = render(app, overview.layout)
    figure = by_id(page, ids.LAYER_PLOTS).figure
    titles = [a["title"]["text"] for k, a in figure["layout"].items() if k.startswith("yaxis")]
    assert titles[:4] == [
        "max activation",
        "density (fraction > 0)",
        "fraction > 10% of max",
        "fraction > 50% of max",
    ]
    grid = by_id(page, ids.UNITS_GRID)
    formats = {c["field"]: c.get("valueFormatter", {}).get("function", "") for c in grid.columnDefs}
    assert formats["freq_10"].startswith("ndPercent") and formats["freq_50"].startswith("ndPercent")
    assert units_table.HIDE_DEAD  # unchanged
    assert "Sparsest units (on their own scale)" in texts(page)
    sparsest = sparsity.sparsest(state_of(app).units, {"L0.mlp": 1024 * 32, "L1.mlp": 1024 * 32}, n=10)
    hrefs = [link.href for link in find(page, lambda c: isinstance(c, dcc.Link))]
    assert len(sparsest) == 10 and all(
        f"/unit/{r.source_id}/{r.unit}" in hrefs for r in sparsest.itertuples()
    )
    without = make_synthetic_store(
        tmp_path / "g.duckdb", n_layers=2, n_units=6, score_metrics=("polysemanticity",)
    )
    assert "Sparsest units (on their own scale)" not in texts(render(create_app(without), overview.layout))
    with Store(path) as store:
        value = store.scores(UnitRef("L1.mlp", 2))["freq_50"]
    cards = texts(render(app, unit.layout, source_id="L1.mlp", index="2"))
    assert "fraction > 50% of max" in cards and fraction_text(value) in cards
