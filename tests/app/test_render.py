"""The pure renderers (`neurodash.app.render`): token heat-maps, figures, widgets, tables."""

from __future__ import annotations

import json

import plotly.io
import pytest
from app_helpers import find, texts, token_rows
from dash import dcc, html
from synthetic import XSS_TOKENS

from neurodash.app.render import figures, highlights, tables, widgets
from neurodash.app.render.formats import fraction_text
from neurodash.colors import NEGATIVE, POSITIVE, rgba
from neurodash.units import Example, LogitEffect, Source, UnitRef, UnitStats

REF = UnitRef("L1.mlp", 7)


def test_token_row_is_one_element_with_its_tokens_as_json():
    row = highlights.token_row(["Hello", " world", "!"], [2.0, -1.0, 0.000001], max_abs=2.0, marked_index=0)
    assert row.children is None and row.className == "nd-tokens"  # neurodash.js builds the spans
    assert token_rows(row) == [
        {"tokens": ["Hello", " world", "!"], "acts": [2.0, -1.0, 0.0], "max_abs": 2.0, "marked": 0}
    ]
    assert token_rows(highlights.token_row(["a"], [1.0], 1.0))[0]["marked"] is None


def test_token_row_carries_html_as_text():
    row = highlights.token_row(list(XSS_TOKENS), [1.0] * len(XSS_TOKENS), 1.0)
    assert token_rows(row)[0]["tokens"] == list(XSS_TOKENS)
    payload = json.loads(plotly.io.to_json(row))  # what the browser receives: text props, no HTML prop
    assert "dangerouslySetInnerHTML" not in json.dumps(payload)


def test_token_row_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="2 tokens but 1 activations"):
        highlights.token_row(["a", "b"], [1.0], 1.0)


def example(bucket: str, rank: int, acts: tuple[float, ...], pos: int) -> Example:
    tokens = tuple(f"t{i}" for i in range(len(acts)))
    return Example(
        REF,
        bucket,
        rank,
        seq_id=3,
        pos=pos + 10,
        start=10,
        tokens=tokens,
        token_ids=tuple(range(len(acts))),
        acts=acts,
    )


def test_example_sections_keep_store_order_and_mark_the_max():
    examples = [
        example("top", 0, (0.1, 2.0, 0.3), 1),
        example("top", 1, (1.5, 0.0, 0.0), 0),
        example("q0.80", 0, (0.5, 0.2, 0.0), 0),
        example("bottom", 0, (-0.1, -0.9, 0.0), 1),
    ]
    sections = highlights.example_sections(examples, max_abs=2.0)
    titles = [texts(s.children[0])[0] for s in sections]
    assert titles == [
        "Top activations",
        "Quantile group 0.80–1.00 of firing tokens",
        "Bottom activations (most negative)",
    ]
    top_rows = sections[0].children[1].children
    assert [texts(r)[0] for r in top_rows] == ["+2.000", "+1.500"]
    assert [row["tokens"][row["marked"]] for row in token_rows(sections[0])] == ["t1", "t0"]


def stats(**overrides) -> UnitStats:
    values = dict(
        ref=REF,
        max_act=2.0,
        min_act=-0.5,
        mean_act=0.1,
        std_act=0.3,
        skew=1.5,
        kurtosis=7.0,
        density=0.25,
        n_tokens=1000,
        hist_edges=(-0.5, 0.0, 0.5, 1.0, 1.5, 2.0),
        hist_counts=(100, 600, 200, 90, 10),
    )
    return UnitStats(**(values | overrides))


def test_histogram_figure():
    fig = figures.histogram_figure(stats())
    bar = fig["data"][0]
    assert bar["x"] == [-0.25, 0.25, 0.75, 1.25, 1.75]
    assert bar["y"] == pytest.approx([0.1, 0.6, 0.2, 0.09, 0.01])
    assert bar["marker"]["color"][0].startswith("rgba(30,110,200") and bar["marker"]["color"][1].startswith(
        "rgba(240"
    )
    assert fig["layout"]["yaxis"]["type"] == "log"
    assert "25.00% of tokens > 0" in fig["layout"]["title"]["text"]
    json.dumps(fig)  # plain JSON, no Plotly objects


def test_logit_figure_escapes_tokens_and_orders_by_rank():
    effects = [
        LogitEffect("+", 1, 5, " b", 1.0),
        LogitEffect("+", 0, 4, XSS_TOKENS[0], 2.0),
        LogitEffect("-", 0, 6, "\n", -3.0),
    ]
    fig = figures.logit_figure(effects)
    boosted, suppressed = fig["data"]
    assert boosted["x"] == [2.0, 1.0] and suppressed["x"] == [-3.0]
    assert fig["layout"]["yaxis"]["ticktext"] == ["'&lt;script&gt;alert(1)&lt;/script&gt;'", "' b'"]
    assert fig["layout"]["yaxis2"]["ticktext"] == ["'\\n'"]
    assert "<script>" not in json.dumps(fig)


def test_token_label_shortens():
    label = figures.token_label("x" * 100, width=10)
    assert label == "'xxxxxxxx…" and len(label) == 10


def test_layer_distribution_figure_one_panel_per_metric():
    box = {
        "layer": [0, 1],
        "q1": [0, 0],
        "median": [1, 1],
        "q3": [2, 2],
        "lowerfence": [0, 0],
        "upperfence": [3, 3],
        "max": [4, 4],
    }
    fig = figures.layer_distribution_figure({"max_act": {"neuron": box}, "density": {"neuron": box}})
    assert [t["type"] for t in fig["data"]] == ["box", "box"]
    assert fig["data"][1]["xaxis"] == "x2"
    assert fig["layout"]["xaxis"]["domain"][1] < fig["layout"]["xaxis2"]["domain"][0]
    assert fig["layout"]["showlegend"] is False and fig["layout"]["yaxis"]["type"] == "linear"


def test_layer_distribution_figure_groups_kinds_and_logs_tiny_densities():
    def box(median: float) -> dict:
        return {
            "layer": [15],
            "q1": [median / 2],
            "median": [median],
            "q3": [median * 2],
            "lowerfence": [median / 4],
            "upperfence": [median * 4],
            "max": [median * 5],
        }

    fig = figures.layer_distribution_figure({"density": {"neuron": box(0.4), "sae_feature": box(0.001)}})
    assert [t["name"] for t in fig["data"]] == ["neuron", "sae feature"]
    assert fig["data"][0]["marker"]["color"] != fig["data"][1]["marker"]["color"]
    assert fig["layout"]["boxmode"] == "group" and fig["layout"]["showlegend"] is True
    assert fig["layout"]["yaxis"]["type"] == "log"


def test_unit_header_links_and_permalink():
    source = Source("L1.mlp", "m", "blocks.1.mlp.hook_post", "neuron", 1, 10, 100)
    header = widgets.unit_header(
        "L1N7", source, ("L1N6", UnitRef("L1.mlp", 6)), None, "http://h/unit/L1.mlp/7"
    )
    links = find(header, lambda c: isinstance(c, dcc.Link))
    assert [(link.id, link.href) for link in links] == [("unit-prev", "/unit/L1.mlp/6")]
    assert find(header, lambda c: getattr(c, "id", None) == "unit-next")[0].className.endswith("nd-step-off")
    assert find(header, lambda c: isinstance(c, html.Code))[0].children == "http://h/unit/L1.mlp/7"
    assert find(header, lambda c: isinstance(c, dcc.Clipboard))[0].target_id == "permalink"


def test_neighbor_list_links():
    panel = widgets.neighbor_list([(UnitRef("L1.mlp", 3), 0.5)], ["L1N3"])
    link = find(panel, lambda c: isinstance(c, dcc.Link))[0]
    assert (link.children, link.href) == ("L1N3", "/unit/L1.mlp/3")
    assert "No neighbours" in texts(widgets.neighbor_list([], []))[0]


def test_ranked_units_table():
    row = tables.RankedUnit("L0N5", UnitRef("L0.mlp", 5), 1.25, 0.5, 2.5, "' x'")
    table = tables.ranked_units([row], "none")
    assert {"L0N5", "+1.250", "+2.500", "its max", "50%", "' x'", "at token"} <= set(texts(table))
    without_tokens = tables.ranked_units(
        [tables.RankedUnit("L0N5", UnitRef("L0.mlp", 5), 1.25, 1.5, 0.8)], "none"
    )
    assert "at token" not in texts(without_tokens) and "150%" in texts(without_tokens)
    assert texts(tables.ranked_units([], "nothing here")) == ["nothing here"]


def test_not_found_page_links_home():
    page = widgets.not_found("No unit L9.mlp/1.")
    assert "No unit L9.mlp/1." in texts(page)
    assert "/" in [link.href for link in find(page, lambda c: isinstance(c, dcc.Link))]


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0.0, "0.00%"),
        (0.1234, "12.34%"),
        (0.001, "0.10%"),
        (1 / 65536, "0.0015% (1 in 65.5k)"),
        (1 / 2_000_000, "0.00005% (1 in 2M)"),
        (1 / 5000, "0.02% (1 in 5,000)"),
    ],
)
def test_small_fractions_are_readable(value, shown):
    assert fraction_text(value) == shown


def test_the_histograms_zero_bin_is_neither_sign():
    assert figures.bin_color(-0.1, 0.2) == rgba(figures.ZERO_BIN, 0.85)
    assert figures.bin_color(0.0, 0.2) == rgba(POSITIVE, 0.85)
    assert figures.bin_color(-0.3, -0.1) == rgba(NEGATIVE, 0.85)
