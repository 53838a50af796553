"""A unit on your own text (the unit page's box): the tiny Llama's neuron and SAE feature, checked
against a plain Hugging Face forward pass."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_llama import strongest_unit

from neurodash.errors import NeurodashError
from neurodash.storage import Store
from neurodash.units import parse_ref

TEXT = "def parse(text):\n    return text.split()"


def hf_forward(model_dir, ids: list[int]) -> torch.Tensor:
    """Straight from Hugging Face: blocks.1.mlp.hook_post [pos, d_mlp] for ``ids``."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    kept = {}
    model.model.layers[1].mlp.down_proj.register_forward_pre_hook(lambda m, args: kept.update(x=args[0]))
    with torch.no_grad():
        model(torch.tensor([ids]))
    return kept["x"][0]


def ids_of(model_dir, text: str) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    bos = json.loads((model_dir / "config.json").read_text())["bos_token_id"]
    return [bos, *tokenizer(text, add_special_tokens=False)["input_ids"]]


def test_a_neuron_on_a_text_is_the_plain_forward_pass(tiny_store, tiny_model_dir):
    from precompute.live.own_text import store_unit_on_text

    ref = parse_ref(strongest_unit(tiny_store, "L1.mlp"))
    result = store_unit_on_text(tiny_store, ref, TEXT)
    ids = ids_of(tiny_model_dir, TEXT)
    hook_post = hf_forward(tiny_model_dir, ids)
    assert len(result.tokens) == len(ids) - 1  # BOS left out, as the store's statistics do
    assert "".join(result.tokens) == TEXT
    assert torch.allclose(torch.tensor(result.acts), hook_post[1:, ref.unit], rtol=1e-4, atol=1e-5)


def test_an_sae_feature_on_a_text_is_the_sae_on_the_forward_pass(tiny_store, tiny_model_dir):
    from precompute.live.own_text import store_unit_on_text
    from precompute.sae import load_sae

    ref = parse_ref(strongest_unit(tiny_store, "L1.sae"))
    result = store_unit_on_text(tiny_store, ref, TEXT)
    with Store(tiny_store) as store:
        sae = load_sae(store.source("L1.sae").config["saes"][0])
    hook_post = hf_forward(tiny_model_dir, ids_of(tiny_model_dir, TEXT))
    expected = sae.encode(hook_post[None])[0, 1:, ref.unit]
    assert torch.allclose(torch.tensor(result.acts), expected, rtol=1e-4, atol=1e-5)


def test_a_unit_out_of_range_is_one_clear_error(tiny_store):
    from precompute.live.own_text import unit_on_text

    with Store(tiny_store) as store:
        source = store.source("L1.mlp")
        model_name = store.meta["model"]
    from precompute.live.cache import cached_model

    with pytest.raises(NeurodashError, match="out of range"):
        unit_on_text(cached_model(model_name), source, source.n_units, TEXT)
