"""The text probe on the real embedded model: tokens, shapes, the model cache, and forked jobs."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.model

HOOKS = ["blocks.0.mlp.hook_post", "blocks.3.mlp.hook_post"]
TEXT = "import os\nprint(os.getcwd())"


def test_probe_text_reads_every_token_once():
    from precompute.live.probe import cached_model, probe_text

    tokens, acts = probe_text("smollm2-135m", TEXT, HOOKS)
    assert "".join(tokens) == TEXT  # BOS dropped, nothing lost
    assert set(acts) == set(HOOKS)
    for a in acts.values():
        assert a.shape == (len(tokens), 1536) and a.dtype == np.float32 and np.isfinite(a).all()
    assert cached_model("smollm2-135m") is cached_model("smollm2-135m")


def test_probe_text_matches_the_model_and_keeps_bos_on_request():
    import torch

    from precompute.live.probe import cached_model, probe_text

    model = cached_model("smollm2-135m")
    tokens, acts = probe_text("smollm2-135m", TEXT, HOOKS, keep_bos=True)
    ids = [model.bos_token_id] + model.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    expected = model.activations(torch.tensor([ids]), HOOKS)
    assert tokens[0] == model.tokenizer.decode([model.bos_token_id]) and len(tokens) == len(ids)
    for hook in HOOKS:
        np.testing.assert_allclose(acts[hook], expected[hook][0].numpy(), rtol=1e-5, atol=1e-5)


def test_probe_text_caps_long_texts():
    from precompute.live.probe import probe_text

    tokens, acts = probe_text("smollm2-135m", "word " * 100, HOOKS[:1], max_tokens=16)
    assert len(tokens) == 16 and acts[HOOKS[0]].shape == (16, 1536)


def _forked_probe(queue) -> None:
    from precompute.live.probe import avoid_inherited_thread_pool, probe_text

    avoid_inherited_thread_pool()
    tokens, _ = probe_text("smollm2-135m", TEXT, HOOKS)
    queue.put(len(tokens))


def test_a_job_forked_after_torch_ran_here_finishes():
    """As the dashboard's background jobs are forked (DiskcacheManager), from a process that used torch."""
    import torch
    from multiprocess import Process, Queue

    torch.randn(256, 256) @ torch.randn(256, 256)  # this process's OpenMP pool is now in use
    queue = Queue()
    job = Process(target=_forked_probe, args=(queue,))
    job.start()
    job.join(timeout=60)
    hung = job.is_alive()
    if hung:
        job.kill()
    assert not hung
    assert queue.get(timeout=5) > 5
