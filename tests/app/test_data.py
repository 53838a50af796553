"""Pure data shaping for the pages: labels, unit order, box statistics, table payload, probe summary."""

from __future__ import annotations

import base64

import numpy as np
import pandas as pd
import pytest

from neurodash.app import data
from neurodash.units import NEURON, SAE_FEATURE, Source, UnitRef, parse_ref


def source(sid: str, layer: int, n: int = 4, kind: str = NEURON) -> Source:
    return Source(sid, "m", f"blocks.{layer}.mlp.hook_post", kind, layer, n, 100)


SOURCES = [
    source("L0.mlp", 0),
    source("L1.mlp", 1, n=2),
    source("L1.sae", 1, kind=SAE_FEATURE),
    source("L1.sae.big", 1, kind=SAE_FEATURE),
]


def test_labels_are_what_parse_ref_reads():
    prefixes = data.label_prefixes(SOURCES)
    assert prefixes == {"L0.mlp": "L0N", "L1.mlp": "L1N", "L1.sae": "L1F", "L1.sae.big": None}
    for ref in (UnitRef("L0.mlp", 3), UnitRef("L1.sae", 2), UnitRef("L1.sae.big", 1)):
        label = data.unit_label(ref, prefixes)
        assert parse_ref(label, SOURCES) == ref
    assert data.unit_label(UnitRef("L1.sae.big", 1), prefixes) == "L1.sae.big/1"


@pytest.mark.parametrize(
    ("ref", "prev", "nxt"),
    [
        (UnitRef("L0.mlp", 0), None, UnitRef("L0.mlp", 1)),
        (UnitRef("L0.mlp", 3), UnitRef("L0.mlp", 2), UnitRef("L1.mlp", 0)),
        (UnitRef("L1.mlp", 0), UnitRef("L0.mlp", 3), UnitRef("L1.mlp", 1)),
        (UnitRef("L1.sae.big", 3), UnitRef("L1.sae.big", 2), None),
    ],
)
def test_adjacent_units_run_across_sources(ref, prev, nxt):
    assert data.adjacent_units(ref, SOURCES) == (prev, nxt)


def units_frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 200
    return pd.DataFrame(
        {
            "source_id": ["L0.mlp"] * 100 + ["L1.mlp"] * 100,
            "layer": [0] * 100 + [1] * 100,
            "kind": NEURON,
            "unit": np.r_[np.arange(100), np.arange(100)],
            "max_act": rng.lognormal(0, 1, n),
            "density": rng.uniform(0, 1, n),
            "score": np.r_[rng.uniform(0, 1, n - 1), np.nan],
        }
    )


def test_box_stats_match_numpy():
    frame = units_frame()
    boxes = data.box_stats(frame, "max_act")["neuron"]
    assert boxes["layer"] == [0, 1]
    for i, layer in enumerate((0, 1)):
        values = frame.loc[frame["layer"] == layer, "max_act"].to_numpy()
        q1, median, q3 = np.quantile(values, [0.25, 0.5, 0.75])
        assert boxes["q1"][i] == pytest.approx(q1, rel=1e-3)
        assert boxes["median"][i] == pytest.approx(median, rel=1e-3)
        assert boxes["upperfence"][i] == pytest.approx(values[values <= q3 + 1.5 * (q3 - q1)].max(), rel=1e-3)
        assert boxes["lowerfence"][i] == pytest.approx(values[values >= q1 - 1.5 * (q3 - q1)].min(), rel=1e-3)
        assert boxes["max"][i] == pytest.approx(values.max(), rel=1e-3)


def test_box_stats_skip_missing_scores():
    boxes = data.box_stats(units_frame(), "score")["neuron"]
    assert len(boxes["layer"]) == 2 and not any(np.isnan(boxes["median"]))


def decode(text: str, dtype) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=np.dtype(dtype).newbyteorder("<"))


def test_units_payload_round_trips():
    frame = units_frame()
    sources = [source("L0.mlp", 0, n=100), source("L1.mlp", 1, n=100)]
    payload = data.units_payload(frame, sources, ["max_act", "score"])
    assert payload["n"] == 200
    assert payload["sources"][1] == {
        "id": "L1.mlp",
        "layer": 1,
        "kind": NEURON,
        "prefix": "L1N",
        "href": "/unit/L1.mlp/",
    }
    np.testing.assert_array_equal(decode(payload["source"], np.uint16), np.repeat([0, 1], 100))
    np.testing.assert_array_equal(decode(payload["unit"], np.int32), frame["unit"])
    np.testing.assert_allclose(decode(payload["metrics"]["max_act"], np.float32), frame["max_act"], rtol=1e-6)
    assert np.isnan(decode(payload["metrics"]["score"], np.float32)[-1])


def test_max_by_source():
    frame = units_frame().iloc[::-1]  # any row order
    maxima = data.max_by_source(frame, [source("L0.mlp", 0, n=101), source("L1.mlp", 1, n=100)])
    assert maxima["L0.mlp"][5] == pytest.approx(
        frame.query("source_id == 'L0.mlp' and unit == 5")["max_act"].item()
    )
    assert maxima["L0.mlp"][100] == 0.0  # no row: 0


def test_summarise_probe_ranks_by_fraction_of_max():
    acts = {
        "L0.mlp": np.array([[0.8, 0.0, 9.0], [0.0, 2.0, 0.0]]),
        "L1.mlp": np.array([[0.0, 0.5], [3.0, 0.0]]),
    }
    unit_max = {"L0.mlp": np.array([2.0, 2.0, 10.0]), "L1.mlp": np.array([1.0, 1.0])}
    summary = data.summarise_probe(["a", "b"], acts, unit_max, per_token=2, top=3)
    assert summary["tokens"] == ["a", "b"]
    # [source, unit, activation, fraction of its max, its max over the corpus]
    assert summary["per_token"][0] == [["L0.mlp", 2, 9.0, 0.9, 10.0], ["L1.mlp", 1, 0.5, 0.5, 1.0]]
    assert summary["per_token"][1] == [["L1.mlp", 0, 3.0, 3.0, 1.0], ["L0.mlp", 1, 2.0, 1.0, 2.0]]
    assert summary["strength"] == [0.9, 3.0]
    assert summary["top"] == [  # and the position of its peak
        ["L1.mlp", 0, 3.0, 3.0, 1.0, 1],
        ["L0.mlp", 1, 2.0, 1.0, 2.0, 1],
        ["L0.mlp", 2, 9.0, 0.9, 10.0, 0],
    ]
    assert summary["top_acts"] == [[0.0, 3.0], [0.0, 2.0], [9.0, 0.0]]
    assert summary["top_max"] == [1.0, 2.0, 10.0]
    assert summary["columns"] == [["L0.mlp", 3], ["L1.mlp", 2]]


def test_summarise_probe_lists_more_than_eight_units_per_token_by_default():
    acts = {"L0.mlp": np.arange(40, dtype=np.float32)[None, :], "L15.sae": np.ones((1, 30), dtype=np.float32)}
    unit_max = {"L0.mlp": np.full(40, 40.0), "L15.sae": np.full(30, 2.0)}
    summary = data.summarise_probe(["a"], acts, unit_max)
    (at_a,) = summary["per_token"]
    assert len(at_a) == data.PROBE_PER_TOKEN > 8
    assert at_a[0] == ["L0.mlp", 39, 39.0, 0.975, 40.0]  # neurons and SAE features in one ranking
    assert {e[0] for e in at_a} == {"L0.mlp", "L15.sae"}


def test_summarise_probe_floors_dead_units():
    acts = {"L0.mlp": np.array([[0.5, 1.0, 1.0]])}
    unit_max = {"L0.mlp": np.array([0.0, 10.0, 10.0])}  # unit 0 never fired on the corpus
    summary = data.summarise_probe(["a"], acts, unit_max, per_token=1, top=1)
    assert summary["top"][0][3] == pytest.approx(0.5)  # floored at a tenth of the median max (1.0)
