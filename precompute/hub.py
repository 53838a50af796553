"""The Hugging Face hub: reachable or not, decided once, so offline errors come at once."""

from __future__ import annotations

import functools
import os
import re
import socket
from pathlib import PurePath
from urllib.parse import urlparse


@functools.cache
def hub_reachable(timeout: float = 3.0) -> bool:
    """True if the hub answers; otherwise switch the HF libraries to offline mode (cache only)."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        go_offline()
        return False


def go_offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    try:  # already imported: its constants were read at import time
        import huggingface_hub.constants as constants

        constants.HF_HUB_OFFLINE = True
    except ImportError:
        pass


# A hub repository id: ``gpt2``, ``Skylion007/openwebtext``, ``EleutherAI/pythia-1.4b``.
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
_FILE_SUFFIXES = {
    ".txt",
    ".json",
    ".jsonl",
    ".parquet",
    ".csv",
    ".arrow",
    ".safetensors",
    ".gguf",
    ".bin",
    ".pt",
}


def looks_like_path(name: str) -> bool:
    """Whether ``name`` is meant as a local file or folder, not a hub name: it starts with ``/``,
    ``./``, ``../`` or ``~``, ends in a file suffix (``.jsonl``), or is no hub repository id
    (``a/b/c``). ``gpt2``, ``Skylion007/openwebtext`` and ``EleutherAI/pythia-1.4b`` are hub names."""
    return not _REPO_ID.fullmatch(name) or PurePath(name).suffix.lower() in _FILE_SUFFIXES
