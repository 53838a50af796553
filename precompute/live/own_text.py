"""One unit on a text of your own: its activation at every token (the unit page's "try your own text").

The text is tokenized as the pipeline and the probe do it: BOS, then the text without special tokens;
the BOS position is left out of the result unless ``keep_bos``. A neuron is read at its hook; an SAE
feature is the store's SAE (``cached_sae``) encoding that hook's activations. Models and SAEs load once
per process (``precompute.live.cache``): the dashboard calls this from background jobs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

from neurodash.errors import NeurodashError
from neurodash.storage import Store
from neurodash.units import NEURON, SAE_FEATURE, Source, UnitRef
from precompute.live.cache import cached_model, cached_sae
from precompute.live.maximize import sae_spec
from precompute.models import LoadedModel

MAX_TOKENS = 512


@dataclass(frozen=True)
class UnitOnText:
    """The text's tokens (as the model reads them) and the unit's activation at each."""

    tokens: tuple[str, ...]
    acts: tuple[float, ...]


def unit_on_text(
    model: LoadedModel,
    source: Source,
    unit: int,
    text: str,
    keep_bos: bool = False,
    max_tokens: int = MAX_TOKENS,
) -> UnitOnText:
    """Unit ``unit`` of ``source`` on ``text`` (its first ``max_tokens`` tokens)."""
    if source.kind not in (NEURON, SAE_FEATURE):
        raise NeurodashError(f"cannot run {source.source_id} on a text: it is a {source.kind} source")
    if not 0 <= unit < source.n_units:
        raise NeurodashError(f"unit {unit} is out of range for {source.source_id} (0..{source.n_units - 1})")
    model.check_hooks([source.hook])
    bos = model.bos_token_id
    ids = ([bos] if bos is not None else []) + model.tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = ids[: max_tokens + (bos is not None)]
    hook_acts = model.activations(torch.tensor([ids], dtype=torch.long), [source.hook])[source.hook]
    with torch.inference_mode():
        if source.kind == SAE_FEATURE:
            acts = cached_sae(sae_spec(source), model.device).encode(hook_acts.float())[0, :, unit]
        else:
            acts = hook_acts[0, :, unit]
    first = 1 if bos is not None and not keep_bos else 0
    tokens = model.token_strings(ids[first:])
    return UnitOnText(tuple(tokens), tuple(float(a) for a in acts[first:].float().cpu()))


def store_unit_on_text(
    store_path: str | os.PathLike, ref: UnitRef, text: str, device: str = "cpu"
) -> UnitOnText:
    """``unit_on_text`` for a unit of the store at ``store_path``, with the store's model and BOS rule."""
    with Store(store_path) as store:
        source = store.source(ref.source_id)
        model_name = store.meta.get("model")
        keep_bos = _keep_bos(store.meta.get("config"))
    if not model_name:
        raise NeurodashError(f"{store_path} does not name its model")
    return unit_on_text(cached_model(model_name, device), source, ref.unit, text, keep_bos)


def _keep_bos(config: str | None) -> bool:
    """Whether the store's statistics include the BOS position (its config says)."""
    return bool(json.loads(config or "{}").get("keep_bos", False))
