"""The text probe: every unit's activation on one text, token by token.

Models are loaded once per process (``cached_model``): the dashboard calls this from background
jobs, never from a request thread. The text is tokenized as the pipeline does it: BOS, then the
text without special tokens; the BOS position is dropped unless ``keep_bos``.
"""

from __future__ import annotations

import numpy as np
import torch

from precompute.models import DEFAULT_MODEL, LoadedModel, load_model

MAX_TOKENS = 512
_MODELS: dict[tuple[str, str], LoadedModel] = {}


def avoid_inherited_thread_pool() -> None:
    """Run torch on one thread. A process forked from one that had already used torch's OpenMP
    pool (a test run, a notebook) hangs at its first parallel op otherwise."""
    torch.set_num_threads(1)


def cached_model(name: str = DEFAULT_MODEL, device: str = "cpu") -> LoadedModel:
    """``load_model`` once per (name, device) in this process."""
    key = (name, device)
    if key not in _MODELS:
        _MODELS[key] = load_model(name, device)
    return _MODELS[key]


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
