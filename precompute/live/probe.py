"""The text probe: every unit's activation on one text, token by token, and on request the attention
pattern of every head of every layer; SAE features too, each SAE encoding its hook's activations.

Models are loaded once per process (``precompute.live.cache``): the dashboard calls this from
background jobs, never from a request thread. The text is tokenized as the pipeline does it: BOS, then the
text without special tokens; the BOS position is dropped from the tokens and activations unless
``keep_bos``, but never from the attention patterns (where BOS is the usual sink, rows would not sum to 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from neurodash.units import Source
from precompute.live.cache import avoid_inherited_thread_pool, cached_model, cached_sae
from precompute.live.maximize import sae_spec

MAX_TOKENS = 512
ATTENTION = "attention"  # the key of the patterns among probe_text's activations (no hook is named so)

__all__ = [
    "ATTENTION",
    "MAX_TOKENS",
    "attention_hook",
    "avoid_inherited_thread_pool",
    "cached_model",
    "probe_text",
]


def attention_hook(layer: int) -> str:
    """The hook of a layer's attention pattern, [batch, query heads, query, key]."""
    return f"blocks.{layer}.attn.hook_pattern"


def probe_text(
    model_name: str,
    text: str,
    hooks: list[str],
    device: str = "cpu",
    keep_bos: bool = False,
    max_tokens: int = MAX_TOKENS,
    attention: bool = False,
    saes: Sequence[Source] = (),
) -> tuple[list[str], dict[str, np.ndarray]]:
    """(tokens, {hook: activations [pos, units]}) for ``text``, at most ``max_tokens`` tokens, in one
    forward pass. With ``saes`` (SAE feature sources of a store), the dict also holds each one's
    feature activations [pos, features] under its source id (its SAE encoding its hook's activations). With ``attention``, it also holds ``ATTENTION``: every layer's
    pattern as float16 [layers, query heads, pos, pos] over every position, BOS included (one more
    position than the tokens when BOS is dropped from them)."""
    model = cached_model(model_name, device)
    sae_hooks = [s.hook for s in saes]
    attention_hooks = [attention_hook(layer) for layer in range(model.n_layers)] if attention else []
    wanted = list(dict.fromkeys([*hooks, *sae_hooks, *attention_hooks]))
    model.check_hooks(wanted)
    bos = model.bos_token_id
    ids = ([bos] if bos is not None else []) + model.tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = ids[: max_tokens + (bos is not None)]
    acts = model.activations(torch.tensor([ids], dtype=torch.long), wanted) if wanted else {}
    first = 1 if bos is not None and not keep_bos else 0
    tokens = model.token_strings(ids[first:])
    out = {hook: acts[hook][0, first:].float().cpu().numpy() for hook in hooks}
    with torch.inference_mode():
        for source in saes:
            features = cached_sae(sae_spec(source), model.device).encode(acts[source.hook].float())[0, first:]
            out[source.source_id] = features.float().cpu().numpy()
    if attention:
        patterns = [acts[attention_hook(layer)][0] for layer in range(model.n_layers)]
        out[ATTENTION] = torch.stack(patterns).to(torch.float16).cpu().numpy()
    return tokens, out
