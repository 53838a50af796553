"""Lab runs (neurodash/storage/lab.py): saved beside the store, listed newest first, reopened whole
(JSON round trip), the CSV rows; another kind of file refused; and gap weighting of averages."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neurodash.errors import NeurodashError
from neurodash.lab import gap_weighted_mean
from neurodash.lab_run import CSV_COLUMNS, LabRun
from neurodash.storage.lab import LabRuns, lab_path
from neurodash.storage.sets import ExampleSets


def test_save_list_and_reopen(tiny_lab_run, tmp_path):
    runs = LabRuns.beside(tmp_path / "tiny.duckdb").check()
    assert runs.path == tmp_path / "tiny.lab.duckdb" == lab_path(tmp_path / "tiny.duckdb")
    assert runs.list() == [] and runs.get(1) is None
    first, second = runs.save(tiny_lab_run), runs.save(tiny_lab_run)
    assert [s.run_id for s in runs.list()] == [second, first]
    summary = runs.list()[0]
    assert summary.prompts == ("A B A B A", "X Y X Y X")
    assert summary.query == tiny_lab_run.settings.to_query()
    back = runs.get(first)
    assert back is not None and back.run_id == first
    assert back.settings == tiny_lab_run.settings and back.prompts == tiny_lab_run.prompts
    assert back.circuit == tiny_lab_run.circuit
    np.testing.assert_array_equal(back.patching.heads, tiny_lab_run.patching.heads)
    np.testing.assert_array_equal(
        back.analyses[1].lens.answer_prob, tiny_lab_run.analyses[1].lens.answer_prob
    )
    assert back.steering[0].run == tiny_lab_run.steering[0].run
    assert runs.get(999) is None


def test_json_is_plain_json_and_round_trips(tiny_lab_run):
    text = json.dumps(tiny_lab_run.to_json(), allow_nan=False)  # NaN written as null
    back = LabRun.from_json(json.loads(text))
    np.testing.assert_array_equal(back.patching.resid[0], tiny_lab_run.patching.resid[0])  # NaN kept
    assert back.ablation.kind == tiny_lab_run.ablation.kind


def test_csv_rows_cover_every_section(tiny_lab_run):
    rows = tiny_lab_run.csv_rows()
    assert all(tuple(r) == CSV_COLUMNS for r in rows)
    sections = {r["section"] for r in rows}
    assert {
        "prediction",
        "dla",
        "ablation_mean",
        "patching",
        "patching_resid",
        "circuit",
        "steering",
    } <= sections
    heads = [r for r in rows if r["section"] == "dla" and r["prompt"] == 0 and r["item"] == "L1H2"]
    assert heads[0]["value"] == pytest.approx(float(tiny_lab_run.analyses[0].attribution.heads[1, 2]))


def test_another_kind_of_file_is_refused(tmp_path):
    sets = ExampleSets(tmp_path / "x.duckdb")
    sets.create("a")
    with pytest.raises(NeurodashError, match="sets file"):
        LabRuns(tmp_path / "x.duckdb").check()
    with pytest.raises(NeurodashError):
        LabRuns(tmp_path / "missing" / "x.lab.duckdb").check()


def test_gap_weighted_mean_keeps_a_tiny_gap_from_swamping():
    # the digits prompt of the course: gap 0.17, a score of 6.4; the others near 1 with gaps ~5
    scores = np.array([[1.0], [0.9], [6.4]])
    gaps = np.array([5.0, 4.0, 0.17])
    weighted = gap_weighted_mean(scores, gaps)[0]
    assert weighted == pytest.approx((5 * 1.0 + 4 * 0.9 + 0.17 * 6.4) / 9.17)
    assert weighted < 1.1 < scores.mean()
    # the pooled ratio: sum(patched - corrupted) / sum(gap)
    assert gap_weighted_mean(np.array([[0.5], [np.nan]]), np.array([2.0, 0.0]))[0] == 0.5
    assert np.isnan(gap_weighted_mean(np.array([[np.nan]]), np.array([0.0]))[0])
