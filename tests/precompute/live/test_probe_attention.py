"""The probe's attention patterns on the tiny Llama: every layer's, rows summing to 1, BOS kept, and
the same numbers as a plain cached forward pass."""

from __future__ import annotations

import numpy as np
import torch

from precompute.live.probe import ATTENTION, attention_hook, cached_model, probe_text

TEXT = "def f(x):\n    return x"


def test_probe_text_returns_every_layers_attention(tiny_model_dir):
    name = str(tiny_model_dir)
    hooks = ["blocks.0.mlp.hook_post"]
    tokens, acts = probe_text(name, TEXT, hooks, attention=True)
    model = cached_model(name)
    patterns = acts[ATTENTION]
    n = len(tokens) + 1  # BOS dropped from the tokens, kept in the patterns
    assert patterns.dtype == np.float16 and patterns.shape[:1] == (model.n_layers,)
    assert patterns.shape[2:] == (n, n) and acts[hooks[0]].shape[0] == len(tokens)
    assert np.allclose(patterns.astype(np.float32).sum(-1), 1, atol=2e-3)
    assert np.all(np.triu(patterns.astype(np.float32), 1) == 0)  # causal
    ids = [model.bos_token_id] + model.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    wanted = [attention_hook(layer) for layer in range(model.n_layers)]
    _, cache = model.bridge.run_with_cache(torch.tensor([ids]), names_filter=lambda h: h in wanted)
    for layer, hook in enumerate(wanted):
        assert np.allclose(patterns[layer], cache[hook][0].float().numpy(), atol=1e-3)


def test_probe_text_without_attention_is_as_before(tiny_model_dir):
    tokens, acts = probe_text(str(tiny_model_dir), TEXT, ["blocks.1.mlp.hook_post"])
    assert set(acts) == {"blocks.1.mlp.hook_post"} and "".join(tokens) == TEXT
