"""The text probe's attention panel over a stubbed model: the job saves the patterns, the panel draws
the chosen head as a heat map and arcs, and a clicked token lists the heads attending most to it."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
from app_helpers import find, texts
from dash.exceptions import PreventUpdate
from synthetic import XSS_TOKENS

from neurodash.app import create_app, state
from neurodash.app.panels import probe_attention, text_probe

TOKENS = ["Hello", XSS_TOKENS[0], " world", XSS_TOKENS[1]]
LAYERS, HEADS = 3, 4


def patterns() -> np.ndarray:
    """Causal rows; head (2, 1) attends from every token to the one before, the others uniformly."""
    n = len(TOKENS) + 1  # with BOS
    uniform = np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None]
    out = np.broadcast_to(uniform, (LAYERS, HEADS, n, n)).copy()
    previous = np.eye(n, k=-1)
    previous[0, 0] = 1
    out[2, 1] = previous
    return out.astype(np.float16)


@pytest.fixture
def app(heads_store, tmp_path, monkeypatch):
    monkeypatch.setenv("NEURODASH_HOME", str(tmp_path))

    def probe_text(model, text, hooks, keep_bos=False, attention=False, saes=()):
        acts = {h: np.ones((len(TOKENS), 40), dtype=np.float32) for h in hooks}
        return list(TOKENS), acts | ({"attention": patterns()} if attention else {})

    stub = types.SimpleNamespace(
        cached_model=lambda name: None, probe_text=probe_text, avoid_inherited_thread_pool=lambda: None
    )
    monkeypatch.setitem(sys.modules, "precompute.live.probe", stub)
    return create_app(heads_store)


def run(app) -> dict:
    config = {"model": "synthetic", "hooks": {"blocks.0.mlp.hook_post": "L0.mlp"}, "keep_bos": False}
    with app.server.test_request_context("/probe"):
        unit_max = state.current().unit_max
    result, status = text_probe.probe_job(lambda _: None, "x", config | {"attention": True}, unit_max)
    assert status == "4 tokens probed."
    return result


def test_the_job_saves_the_patterns_and_passes_their_key(app, tmp_path):
    info = run(app)["attention"]
    assert info["tokens"] == ["<bos>", *TOKENS] and info["offset"] == 1
    assert (info["layers"], info["heads"]) == (LAYERS, HEADS)
    saved = probe_attention.load_patterns(info["key"])
    assert saved is not None and np.array_equal(saved, patterns())
    assert (tmp_path / "cache" / "attention" / f"{info['key']}.npy").is_file()
    json.dumps(info)  # what goes to the browser is small and JSON


@pytest.mark.parametrize("key", [None, 3, "../../etc/passwd", "0" * 31, "g" * 32, "0" * 32])
def test_an_unknown_key_loads_nothing(app, key):
    assert probe_attention.load_patterns(key) is None


def test_old_patterns_are_dropped(tmp_path):
    keys = [
        probe_attention.save_patterns(patterns(), tmp_path) for _ in range(probe_attention.KEEP_FILES + 3)
    ]
    assert len(list(tmp_path.glob("*.npy"))) == probe_attention.KEEP_FILES
    assert probe_attention.load_patterns(keys[-1], tmp_path) is not None


def test_the_chosen_head_as_heat_map_and_arcs(app):
    result = run(app)
    assert probe_attention.head_choices(result)[1::2] == (0, 0)
    with app.server.test_request_context("/probe"):
        figure, arcs = probe_attention.show_head(2, 1, result)
    heatmap = figure["data"][0]
    assert len(heatmap["z"]) == 5 and heatmap["z"][3][2] == 1.0
    assert "&lt;script&gt;" in heatmap["customdata"][2][2][1]  # Plotly labels escaped
    payload = json.loads(
        getattr(find(arcs, lambda c: getattr(c, "className", None) == "nd-arcs")[0], "data-arcs")
    )
    assert payload["tokens"] == ["<bos>", *TOKENS]  # as data: the browser builds them as text
    assert sorted(payload["arcs"]) == [[q, q - 1, 1.0] for q in range(1, 5)]
    with pytest.raises(PreventUpdate):
        probe_attention.show_head(9, 0, result)


def test_a_clicked_token_lists_the_heads_attending_to_it_from_the_last(app):
    result = run(app)
    with app.server.test_request_context("/probe"):
        panel = probe_attention.heads_at_token({"index": 2, "at": 1}, result)  # " world", position 3
        with pytest.raises(PreventUpdate):
            probe_attention.heads_at_token({"index": 4}, result)
    shown = texts(panel)
    assert shown[shown.index("head") + 2] == "L2H1" and "1.000" in shown  # the previous-token head first
    links = [c.href for c in find(panel, lambda c: getattr(c, "href", None) is not None)]
    assert "/head/2/1" in links  # the store has that head
