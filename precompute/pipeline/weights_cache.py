"""What the store holds that depends on the weights alone (logit effects, nearest units, probe
scores), kept under ``$NEURODASH_HOME/cache/weights`` by a fingerprint of exactly what it is
computed from, so that a repeat run over the same weights (a rebuild, another corpus, each run of a
merge) reads it instead of computing it again.

A fingerprint covers the input tensors' bytes (dtype and shape included), the settings, the device
kind and float32 matmul precision, the torch version and the source of the code that computes it;
a hit returns the very arrays a cold run computed and saved, so the store is the same row for row.
Entries are written whole (to a temporary file, then renamed); one that cannot be read is computed
again. ``NEURODASH_WEIGHTS_CACHE=0`` turns the cache off; set to a folder, it keeps entries there.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch import Tensor

from neurodash import paths

Part = Tensor | str | int | float | tuple | None


def fingerprint(*parts: Part | Callable | ModuleType) -> str:
    """A sha256 over ``parts``: tensors by dtype, shape and bytes, functions and modules by their
    source, the rest by ``repr``; with the torch version, always."""
    h = hashlib.sha256(f"torch {torch.__version__}".encode())
    for part in parts:
        if isinstance(part, Tensor):
            t = part.detach().contiguous().cpu()
            h.update(f"{t.dtype} {tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)  # its own memory, not a copy
        elif callable(part) or isinstance(part, ModuleType):
            h.update(inspect.getsource(part).encode())
        else:
            h.update(repr(part).encode())
        h.update(b"\x00")
    return h.hexdigest()


def module_fingerprint(module: torch.nn.Module, device: str | torch.device) -> str:
    """A model's: every named parameter and buffer (each hashed on its own, on up to 4 of the threads
    torch uses: each thread copies a device's tensor to the host), its Hugging Face config where it
    has one, the versions of the libraries that run it, and what decides the device's float32 results."""
    from importlib.metadata import version

    config = getattr(getattr(module, "original_model", module), "config", None)
    to_json = getattr(config, "to_json_string", None)
    parts: list[Part] = [
        str(to_json()) if callable(to_json) else None,
        *(f"{lib} {version(lib)}" for lib in ("transformers", "transformer-lens")),
        device_kind(device),
    ]
    named = [*module.named_parameters(), *module.named_buffers()]
    with ThreadPoolExecutor(min(4, torch.get_num_threads())) as pool:  # hashlib lets go of the GIL
        digests = pool.map(fingerprint, [tensor for _, tensor in named])
        for (name, _), digest in zip(named, digests):
            parts += [name, digest]
    return fingerprint(*parts)


def device_kind(device: str | torch.device) -> tuple[str, str]:
    """What, beyond the inputs, decides a device's float32 results: its kind and matmul precision."""
    return torch.device(device).type, torch.get_float32_matmul_precision()


def folder() -> Path | None:
    """Where entries live (``NEURODASH_WEIGHTS_CACHE``, default ``$NEURODASH_HOME/cache/weights``), or
    None when the cache is off (``NEURODASH_WEIGHTS_CACHE=0``)."""
    setting = os.environ.get("NEURODASH_WEIGHTS_CACHE", "")
    if setting == "0":
        return None
    return Path(setting) if setting else paths.home() / "cache" / "weights"


def cached_arrays(key: str, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays saved under ``key``, or ``compute()``'s, saved there for the next run."""
    where = folder()
    if where is None:
        return compute()
    path = where / f"{key}.npz"
    try:
        with np.load(path, allow_pickle=False) as saved:
            return {name: saved[name] for name in saved.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # missing, or not whole
        pass
    arrays = compute()
    try:
        where.mkdir(parents=True, exist_ok=True)
        partial = where / f".{key}.{os.getpid()}.partial.npz"
        np.savez(partial, allow_pickle=False, **arrays)
        os.replace(partial, path)
    except OSError:  # a read-only home: the run goes on uncached
        pass
    return arrays
