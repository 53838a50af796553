"""Head scores (precompute/heads.py) against models whose heads are known, and on the real model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from precompute.ground_truth.attention import (
    DUPLICATE,
    INDUCTION,
    PREVIOUS,
    TO_BOS,
    HookedAttention,
    TrainConfig,
    hand_built_model,
    repeated_segments,
    second_repeat_loss,
    train_induction_model,
)
from precompute.heads import (
    METRICS,
    BridgeAttention,
    ProbeConfig,
    copying_score,
    ov_eigenvalues,
    pattern_hook,
    query_head_values,
    repeated_random_tokens,
    score_heads,
)

R = 10  # the toys' repeat length (their n_ctx is 2R + 1 or more)
TOY_PROBE = ProbeConfig(repeat_len=R, n_sequences=16, batch_size=8)


# --- the hand-built model: every designed score to 1e-4 ------------------------------------------


@pytest.fixture(scope="module")
def hand_built_scores():
    return score_heads(HookedAttention(hand_built_model()), TOY_PROBE).scores


def test_hand_built_heads_score_as_designed(hand_built_scores):
    s = hand_built_scores
    designed = {
        ("previous_token", 0, PREVIOUS): 1.0,
        ("bos", 0, TO_BOS): 1.0,
        ("duplicate_token", 0, DUPLICATE): 1.0,
        ("induction", 1, INDUCTION): 1.0,
        # one-hot heads give nothing to other targets: row 1's previous position is BOS, 1 row in 2R
        ("bos", 0, PREVIOUS): 1 / (2 * R),
        ("previous_token", 0, TO_BOS): 1 / (2 * R),
        ("induction", 0, PREVIOUS): 0.0,
        ("duplicate_token", 0, PREVIOUS): 0.0,
        ("induction", 0, DUPLICATE): 0.0,
        ("duplicate_token", 1, INDUCTION): 0.0,
        # copying: identity OV = 1, minus identity = 0, writing outside the unembedding = 0
        ("copying", 0, DUPLICATE): 1.0,
        ("copying", 1, INDUCTION): 1.0,
        ("copying", 0, TO_BOS): 0.0,
        ("copying", 0, PREVIOUS): 0.0,
    }
    for (metric, layer, head), expected in designed.items():
        assert s[metric][layer, head] == pytest.approx(expected, abs=1e-4), (metric, layer, head)


def test_uniform_heads_score_the_closed_form(hand_built_scores):
    """L1H1 and L1H2 are zero: row p attends 1/(p+1) to each key, so every score has a closed form."""
    every_row = np.mean([1 / (p + 1) for p in range(1, 2 * R + 1)])
    second_repeat = np.mean([1 / (p + 1) for p in range(R + 1, 2 * R + 1)])
    for head in (1, 2):
        assert hand_built_scores["previous_token"][1, head] == pytest.approx(every_row, abs=1e-4)
        assert hand_built_scores["bos"][1, head] == pytest.approx(every_row, abs=1e-4)
        assert hand_built_scores["induction"][1, head] == pytest.approx(second_repeat, abs=1e-4)
        assert hand_built_scores["duplicate_token"][1, head] == pytest.approx(second_repeat, abs=1e-4)
        assert hand_built_scores["copying"][1, head] == 0.0


def test_probe_sequences_are_bos_then_a_distinct_segment_twice():
    model = HookedAttention(hand_built_model())
    tokens = repeated_random_tokens(model, TOY_PROBE)
    assert tokens.shape == (16, 2 * R + 1)
    assert (tokens[:, 0] == 0).all() and (tokens[:, 1:] != 0).all()
    assert torch.equal(tokens[:, 1 : R + 1], tokens[:, R + 1 :])
    assert all(len(set(row[1 : R + 1].tolist())) == R for row in tokens)
    assert torch.equal(tokens, repeated_random_tokens(model, TOY_PROBE))  # seeded


def test_low_rank_eigenvalues_are_the_full_circuits():
    """The d_head x d_head product has the k x k circuit's nonzero eigenvalues, so the same score."""
    generator = torch.Generator().manual_seed(0)
    reads, writes = torch.randn(40, 6, generator=generator), torch.randn(6, 40, generator=generator)
    full = torch.linalg.eigvals(reads.double() @ writes.double())  # 34 of its 40 are ~0
    assert copying_score(ov_eigenvalues(reads, writes)) == pytest.approx(copying_score(full), abs=1e-7)
    assert copying_score(ov_eigenvalues(reads, reads.T)) == pytest.approx(1.0)  # PSD: all positive
    assert copying_score(ov_eigenvalues(reads, -reads.T)) == pytest.approx(0.0)


# --- the trained toy: the detector ranks the causally important heads first ---------------------


def ablation_loss_increase(model, layer: int, head: int, tokens: torch.Tensor) -> float:
    def zero_head(z, hook):
        z[:, :, head] = 0
        return z

    with torch.no_grad():
        base = second_repeat_loss(model, tokens, R).item()
        with model.hooks(fwd_hooks=[(f"blocks.{layer}.attn.hook_z", zero_head)]):
            return second_repeat_loss(model, tokens, R).item() - base


def test_trained_toy_ranks_its_previous_token_and_induction_heads_first():
    config = TrainConfig(repeat_len=R)
    model = train_induction_model(config)
    tokens = repeated_segments(256, R, config.d_vocab, torch.Generator().manual_seed(1))
    assert second_repeat_loss(model, tokens, R).item() < 0.1  # it learned to induct

    # Truth by ablation: the layer-1 head the second repeat needs most is the induction head; the
    # layer-0 head it needs most is the previous-token head the induction head's keys read.
    harm = {
        (layer, head): ablation_loss_increase(model, layer, head, tokens)
        for layer in (0, 1)
        for head in range(3)
    }
    induction_head = max([(1, h) for h in range(3)], key=harm.__getitem__)
    previous_head = max([(0, h) for h in range(3)], key=harm.__getitem__)

    scores = score_heads(HookedAttention(model), TOY_PROBE)
    assert scores.top("induction", 1)[0][:2] == induction_head
    assert scores.top("previous_token", 1)[0][:2] == previous_head


# --- the real model ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def smollm2():
    from precompute.models import load_model

    return load_model()


@pytest.fixture(scope="session")
def smollm2_scores(smollm2):
    return score_heads(BridgeAttention(smollm2))


@pytest.mark.model
def test_real_scores_are_shares_for_every_query_head(smollm2_scores):
    for metric in METRICS:
        values = smollm2_scores.scores[metric]
        assert values.shape == (30, 9) and values.dtype == np.float32, metric
        assert np.isfinite(values).all() and (values >= 0).all() and (values <= 1 + 1e-5).all(), metric


@pytest.mark.model
def test_query_heads_sharing_a_kv_head_get_their_own_scores(smollm2_scores):
    """9 query heads over 3 kv heads: heads 3g..3g+2 share kv head g, yet score differently."""
    for metric in METRICS:
        groups = smollm2_scores.scores[metric].reshape(30, 3, 3)  # [layer, kv head, query in group]
        spread = groups.max(-1) - groups.min(-1)
        assert (spread > 1e-3).mean() > 0.9, metric


@pytest.mark.model
def test_induction_scores_reproduce_a_plain_loop_over_hook_pattern(smollm2):
    layer, config = 5, ProbeConfig(n_sequences=8, batch_size=4)
    scores = score_heads(BridgeAttention(smollm2), config, layers=[layer])
    assert scores.layers == (layer,)
    tokens = repeated_random_tokens(BridgeAttention(smollm2), config)
    R = config.repeat_len
    totals = np.zeros(9)
    for row in tokens:
        pattern = smollm2.activations(row[None], [pattern_hook(layer)])[pattern_hook(layer)][0]
        for head in range(9):
            for q in range(R + 1, 2 * R + 1):  # second repeat: the earlier occurrence is q - R
                totals[head] += pattern[head, q, q - R + 1].item()
    direct = totals / (len(tokens) * R)
    np.testing.assert_allclose(scores.scores["induction"][0], direct, atol=1e-5)


@pytest.mark.model
@torch.inference_mode()
def test_grouped_values_follow_hook_z(smollm2):
    """Query head h reads kv head h // 3: z = pattern @ (normalized input @ W_V per query head)."""
    layer = 4
    bridge = smollm2.bridge
    tokens = torch.tensor([[smollm2.bos_token_id, *range(1000, 1012)]])
    hooks = [pattern_hook(layer), f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.ln1.hook_normalized"]
    cache = smollm2.activations(tokens, hooks)
    scale = dict(bridge.blocks[layer].ln1.named_parameters())["_original_component.weight"]
    W_V = query_head_values(bridge.W_V[layer].detach(), 9)
    v = torch.einsum("bpd,hde->bphe", cache[hooks[2]] * scale, W_V)
    z = torch.einsum("bhqk,bkhe->bqhe", cache[hooks[0]], v)
    torch.testing.assert_close(z, cache[hooks[1]], atol=1e-4, rtol=1e-4)
