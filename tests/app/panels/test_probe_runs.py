"""The probe's saved runs: saved and read back under a key, the oldest pruned, unknown keys refused."""

from __future__ import annotations

import os

import numpy as np
import pytest

from neurodash.app.panels import probe_runs
from neurodash.units import UnitRef

RESULT = {"text": "a b", "tokens": ["a", " b"], "columns": [["L0.mlp", 3], ["L15.sae", 2]]}


def acts() -> np.ndarray:
    return np.arange(10, dtype=np.float32).reshape(2, 5)  # [tokens, L0.mlp's 3 units then L15.sae's 2]


def test_a_run_reads_back_with_every_units_activations(tmp_path):
    key = probe_runs.save(RESULT, acts(), tmp_path)
    loaded = probe_runs.load(key, tmp_path)
    assert loaded == RESULT | {"key": key}
    assert probe_runs.unit_acts(loaded, UnitRef("L0.mlp", 2), tmp_path) == [2.0, 7.0]
    assert probe_runs.unit_acts(loaded, UnitRef("L15.sae", 1), tmp_path) == [4.0, 9.0]
    for unknown in (UnitRef("L0.mlp", 3), UnitRef("L1.mlp", 0), UnitRef("L15.sae", -1)):
        assert probe_runs.unit_acts(loaded, unknown, tmp_path) is None


def test_only_the_latest_runs_are_kept(tmp_path):
    keys = []
    for i in range(probe_runs.KEEP + 2):
        keys.append(probe_runs.save(RESULT, acts(), tmp_path))
        os.utime(tmp_path / f"{keys[-1]}.json", (i, i))  # in order, whatever the clock's resolution
    probe_runs.save(RESULT, acts(), tmp_path)  # prunes
    assert len(list(tmp_path.glob("*.json"))) == len(list(tmp_path.glob("*.npy"))) == probe_runs.KEEP
    assert probe_runs.load(keys[0], tmp_path) is None
    assert probe_runs.unit_acts(RESULT | {"key": keys[0]}, UnitRef("L0.mlp", 0), tmp_path) is None
    assert probe_runs.load(keys[-1], tmp_path) is not None


@pytest.mark.parametrize("key", [None, 3, "../../etc/passwd", "0" * 31, "g" * 32, "0" * 32])
def test_an_unknown_key_loads_nothing(tmp_path, key):
    assert probe_runs.load(key, tmp_path) is None
    assert probe_runs.unit_acts(RESULT | {"key": key}, UnitRef("L0.mlp", 0), tmp_path) is None
