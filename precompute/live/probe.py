"""The text probe: every unit's activation on one text, token by token.

Models are loaded once per process (``precompute.live.cache``): the dashboard calls this from
background jobs, never from a request thread. The text is tokenized as the pipeline does it: BOS, then the
text without special tokens; the BOS position is dropped unless ``keep_bos``.
"""

from __future__ import annotations

import numpy as np
import torch

from precompute.live.cache import avoid_inherited_thread_pool, cached_model

MAX_TOKENS = 512

__all__ = ["MAX_TOKENS", "avoid_inherited_thread_pool", "cached_model", "probe_text"]


def probe_text(
    model_name: str,
    text: str,
    hooks: list[str],
    device: str = "cpu",
    keep_bos: bool = False,
    max_tokens: int = MAX_TOKENS,
) -> tuple[list[str], dict[str, np.ndarray]]:
    """(tokens, {hook: activations [pos, units]}) for ``text``, at most ``max_tokens`` tokens."""
    model = cached_model(model_name, device)
    model.check_hooks(hooks)
    bos = model.bos_token_id
    ids = ([bos] if bos is not None else []) + model.tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = ids[: max_tokens + (bos is not None)]
    acts = model.activations(torch.tensor([ids], dtype=torch.long), hooks)
    first = 1 if bos is not None and not keep_bos else 0
    tokens = model.tokenizer.batch_decode([[i] for i in ids[first:]])
    return tokens, {hook: a[0, first:].float().cpu().numpy() for hook, a in acts.items()}
