"""``--dtype bfloat16``: the same pass with the forward in bf16, its values within bf16's rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_llama import write_pipeline_store

from neurodash.storage import Store
from precompute.models import load_model, mlp_hook


@pytest.fixture(scope="module")
def bf16_store(tiny_model_dir, docs_jsonl, untrained_sae, tmp_path_factory):
    out = tmp_path_factory.mktemp("bf16") / "tiny-bf16.duckdb"
    return write_pipeline_store(out, tiny_model_dir, docs_jsonl, untrained_sae, dtype="bfloat16")


def test_activations_are_float32_from_a_bf16_forward(tiny_model_dir):
    model = load_model(str(tiny_model_dir), "cpu", "bfloat16")
    assert next(model.bridge.parameters()).dtype == torch.bfloat16
    acts = model.activations(torch.tensor([[1, 50, 60, 70]]), [mlp_hook(1)])[mlp_hook(1)]
    assert acts.dtype == torch.float32


def test_bf16_store_matches_the_float32_store(tiny_pipeline_store, bf16_store):
    with Store(tiny_pipeline_store) as fp32, Store(bf16_store) as bf16:
        assert [s.source_id for s in bf16.sources()] == [s.source_id for s in fp32.sources()]
        assert bf16.meta["n_tokens"] == fp32.meta["n_tokens"]
        query = "SELECT source_id, unit, max_act FROM units ORDER BY source_id, unit"
        a, b = fp32.sql(query).fetchall(), bf16.sql(query).fetchall()
        assert [r[:2] for r in a] == [r[:2] for r in b]
        want, got = np.array([r[2] for r in a]), np.array([r[2] for r in b])
        scale = np.abs(want).max()
        assert np.abs(got - want).max() <= 0.05 * scale  # bf16 keeps 8 bits of mantissa, through 2 layers
        for table in ("examples", "logits", "neighbors", "scores"):
            count = f"SELECT count(*) FROM {table}"
            assert bf16.sql(count).fetchone()[0] > 0
