"""The weights cache: a repeat run reads logit effects, nearest units and probe scores instead of
computing them, and writes the very same store; entries are keyed by what they are computed from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from store_compare import differing_rows
from tiny_llama import write_pipeline_store

from precompute.pipeline import weights_cache


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "weights"
    monkeypatch.setenv("NEURODASH_WEIGHTS_CACHE", str(folder))
    return folder


def test_fingerprint_covers_bytes_dtype_and_settings():
    x = torch.arange(6, dtype=torch.float32)
    base = weights_cache.fingerprint("logits", x, 10)
    assert weights_cache.fingerprint("logits", x.clone(), 10) == base
    changed = x.clone()
    changed[3] = torch.nextafter(changed[3], torch.tensor(10.0))
    assert weights_cache.fingerprint("logits", changed, 10) != base  # one ulp of one weight
    assert weights_cache.fingerprint("logits", x.double(), 10) != base
    assert weights_cache.fingerprint("logits", x, 11) != base
    assert weights_cache.fingerprint("logits", x.reshape(2, 3), 10) != base


def test_cached_arrays_computed_once_and_recomputed_when_damaged(cache):
    calls = []

    def compute():
        calls.append(1)
        return {"value": np.arange(4, dtype=np.float32), "token_id": np.arange(4)}

    first = weights_cache.cached_arrays("k", compute)
    again = weights_cache.cached_arrays("k", compute)
    assert len(calls) == 1
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
        assert first[name].dtype == again[name].dtype
    (cache / "k.npz").write_bytes(b"not a zip")  # a damaged entry is computed again
    weights_cache.cached_arrays("k", compute)
    assert len(calls) == 2
    assert not list(cache.glob(".*partial*"))


def test_off(monkeypatch, tmp_path):
    monkeypatch.setenv("NEURODASH_WEIGHTS_CACHE", "0")
    assert weights_cache.folder() is None
    calls = []
    for _ in range(2):
        weights_cache.cached_arrays("k", lambda: calls.append(1) or {"a": np.zeros(1)})
    assert len(calls) == 2


def test_warm_run_writes_the_same_store_without_computing(
    cache, tiny_model_dir, docs_jsonl, untrained_sae, tmp_path, monkeypatch
):
    out = tmp_path / "s.duckdb"  # both runs write here: the path is part of the stored config
    cold = write_pipeline_store(out, tiny_model_dir, docs_jsonl, untrained_sae).rename(
        tmp_path / "cold.duckdb"
    )
    # 3 sources' logits and neighbours (2 layers, the SAE), 2 layers' OV, the probes
    assert len(list(cache.glob("*.npz"))) == 9

    def not_again() -> dict[str, np.ndarray]:
        raise AssertionError("computed again on a warm run")

    read = weights_cache.cached_arrays  # the keys name the code that computes: leave that as it is
    monkeypatch.setattr(weights_cache, "cached_arrays", lambda key, compute: read(key, not_again))
    warm = write_pipeline_store(out, tiny_model_dir, docs_jsonl, untrained_sae)
    assert differing_rows(cold, warm) == {}
