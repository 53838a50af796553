"""The one cache of loaded models (and SAEs) per process, shared by every live feature: the probe,
activation maximization and the circuit lab to come. The dashboard calls these from background
jobs, never from a request thread.
"""

from __future__ import annotations

import torch

from neurodash.config import DEFAULT_MODEL
from precompute.models import LoadedModel, load_model
from precompute.sae.load import LoadedSAE, load_sae

_MODELS: dict[tuple[str, str], LoadedModel] = {}
_SAES: dict[tuple[str, str], LoadedSAE] = {}


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


def cached_sae(spec: str, device: str = "cpu") -> LoadedSAE:
    """``load_sae`` once per (folder or release, device) in this process."""
    key = (spec, device)
    if key not in _SAES:
        _SAES[key] = load_sae(spec, device)
    return _SAES[key]


def loaded() -> list[tuple[str, str]]:
    """The (name, device) of every model loaded in this process (or inherited: the model worker's
    children start with its models)."""
    return list(_MODELS)
