"""Integration on the real embedded model and corpus: stored examples reproduce on a fresh run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neurodash import open_store
from neurodash.units import UnitRef
from precompute import PrecomputeConfig, run_precompute
from precompute.models import load_model, mlp_hook

pytestmark = pytest.mark.model
LAYERS = (0, 15, 29)


@pytest.fixture(scope="module")
def store(tmp_path_factory, embedded_model_dir):
    out = tmp_path_factory.mktemp("real") / "real.duckdb"
    run_precompute(PrecomputeConfig(out=out, layers=LAYERS, tokens=2048), progress=False)
    return open_store(out)


@pytest.fixture(scope="module")
def model(embedded_model_dir):
    return load_model()


def test_sources_describe_the_real_model(store):
    neurons = [s for s in store.sources() if s.kind == "neuron"]
    assert [s.source_id for s in neurons] == [f"L{layer}.mlp" for layer in LAYERS]
    assert {s.n_units for s in neurons} == {1536}
    assert [(s.source_id, s.n_units) for s in store.head_sources()] == [
        (f"L{layer}.attn", 9) for layer in LAYERS
    ]
    assert store.meta["model"] == "smollm2-135m" and store.meta["dataset"] == "python-docs"
    assert len(store.vocab) == 49152


@pytest.mark.parametrize("layer", LAYERS)
def test_top_examples_reproduce_on_a_fresh_forward_pass(store, model, layer):
    units = np.random.default_rng(layer).choice(1536, size=8, replace=False)
    for unit in units:
        ref = UnitRef(f"L{layer}.mlp", int(unit))
        top = store.examples(ref, ["top"])
        assert top, f"{ref} never fired"
        for example in (top[0], top[-1]):
            (ids,) = store.sql(
                "SELECT token_ids FROM sequences WHERE seq_id = ?", [example.seq_id]
            ).fetchone()
            acts = model.activations(torch.tensor([ids]), [mlp_hook(layer)])[mlp_hook(layer)][0, :, unit]
            window = acts[example.start : example.start + len(example.acts)].numpy()
            np.testing.assert_allclose(example.acts, window, rtol=1e-3, atol=1e-4)
            assert example.pos == int(acts[1:].argmax()) + 1, "the max token, BOS left out"
            assert example.value == pytest.approx(float(acts[1:].max()), rel=1e-3, abs=1e-4)


def test_python_api_frames(store):
    units = store.units_frame()
    assert (units["kind"] == "neuron").sum() == 3 * 1536 and (units["kind"] == "head").sum() == 3 * 9
    units = units[units["kind"] == "neuron"]
    assert {"source_id", "layer", "unit", "max_act", "density", "kurtosis"} <= set(units.columns)
    busiest = units.sort_values("max_act").iloc[-1]
    frame = store.examples_frame(UnitRef(busiest.source_id, int(busiest.unit)), ["top"])
    n_sequences = 2048 // 128
    assert len(frame) == min(20, n_sequences) and frame["value"].is_monotonic_decreasing
    assert all(len(t) == len(a) for t, a in zip(frame["tokens"], frame["acts"]))


def test_token_strings_equal_batch_decode_over_the_whole_vocabulary(model, monkeypatch):
    """The fast tokenizer's own batch decode gives what ``batch_decode`` gives, token by token; a
    tokenizer that cleans up after decoding goes through ``batch_decode`` itself."""
    ids = range(len(model.tokenizer))
    expected = model.tokenizer.batch_decode([[i] for i in ids])
    assert model.token_strings(ids) == expected
    assert model.token_strings(np.array([5, 42], dtype=np.int64)) == expected[5:6] + expected[42:43]
    monkeypatch.setattr(model.tokenizer, "clean_up_tokenization_spaces", True)
    called = []
    monkeypatch.setattr(
        model.tokenizer, "batch_decode", lambda rows: called.append(rows) or ["x"] * len(rows)
    )
    assert model.token_strings([7]) == ["x"] and called == [[[7]]]
