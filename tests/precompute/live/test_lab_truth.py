"""The circuit lab's ground truth: a Llama whose weights are set by hand (``induction_llama``) to hold one
induction circuit, a previous-token head (L0H1) feeding an induction head (L1H2), among distractor heads
and zero MLPs. Saved as an HF folder and loaded the way the lab loads any model, through the lab's own
engine: ablation, patching and the minimal circuit must find exactly those two heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neurodash.lab import DENOISE, MEAN, RESAMPLE, ZERO, head
from neurodash.lab_run import LabSettings
from precompute.ground_truth.induction_llama import INDUCTION, N_HEADS, N_LAYERS, PREVIOUS_TOKEN

CIRCUIT = (head(*PREVIOUS_TOKEN), head(*INDUCTION))
# (clean, corrupted): the corrupted prompt changes the earlier occurrence of the last token, so that
# the previous-token head's output differs where the induction head reads it
PAIRS = (("A B C D A", "E B C D A"), ("F G H I J F", "K G H I J F"), ("B C B D E C", "B M B D E C"))
OTHERS_AT_MOST = 0.05  # any other head's normalised patching score, and its share of the ablation


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from precompute.ground_truth.induction_llama import write_induction_llama
    from precompute.live.lab_run import lab_for

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield lab_for(str(write_induction_llama(tmp_path_factory.mktemp("induction-llama"))))
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prompts(lab):
    return [lab.prompt(clean, corrupted=corrupted) for clean, corrupted in PAIRS]


def test_the_model_completes_the_repeat_and_its_heads_attend_as_designed(lab, prompts):
    for prompt, expected in zip(prompts, ("B", "G", "B")):
        analysis = lab.analyse(prompt)
        assert prompt.answer == expected
        assert analysis.predictions[0].prob > 0.99
        patterns = analysis.attention.patterns  # [layer, head, q, k]
        n = len(prompt.token_ids)
        np.testing.assert_allclose(patterns[0, 1, np.arange(1, n), np.arange(n - 1)], 1.0, atol=1e-6)
        earlier = prompt.token_ids.index(prompt.token_ids[-1], 1)  # the last token's first occurrence
        assert patterns[1, 2, -1, earlier + 1] == pytest.approx(1.0, abs=1e-6)
        clean, corrupted = lab.metrics(prompt)
        assert clean > 10 and abs(corrupted) < 1e-3  # corrupted: nothing to induct from


@pytest.mark.parametrize("kind", [ZERO, MEAN, RESAMPLE])
def test_ablating_the_induction_head_destroys_the_repeat_prediction(lab, prompts, kind):
    result = lab.ablate(prompts, kind)
    ranked = result.ranked(top=N_LAYERS * (N_HEADS + 1))
    assert {c for c, _ in ranked[:2]} == set(CIRCUIT)
    worst_other = max(abs(v) for c, v in ranked if c not in CIRCUIT)
    assert worst_other < 0.4 * min(abs(v) for c, v in ranked if c in CIRCUIT)
    means = lab.mean_activations([p.text for p in prompts])
    for prompt in prompts:  # clean: > 0.99 (a mean ablation keeps the mean token mix: up to ~0.19)
        logits = torch.tensor(lab.ablated_logits(prompt, [head(*INDUCTION)], kind, means))
        assert logits[prompt.answer_id] < 0.2 * lab.metrics(prompt)[0]
        assert float(logits.softmax(-1)[prompt.answer_id]) < 0.25
    assert np.all(result.mlps == 0)  # the MLPs are zero: nothing to ablate


def test_patching_locates_exactly_the_previous_token_and_induction_heads(lab, prompts):
    result = lab.patch(prompts, DENOISE)
    scores = result.mean_heads()
    for c in CIRCUIT:
        assert scores[c.layer, c.index] == pytest.approx(1.0, abs=1e-4)
    others = np.delete(scores.ravel(), [c.layer * N_HEADS + c.index for c in CIRCUIT])
    assert np.abs(others).max() < OTHERS_AT_MOST
    np.testing.assert_allclose(result.mean_mlps(), 0.0, atol=1e-6)
    for prompt, resid in zip(prompts, result.resid):
        changed = next(i for i, (a, b) in enumerate(zip(prompt.token_ids, prompt.corrupted_ids)) if a != b)
        # layer 0: the changed token; layer 1: where the previous-token head wrote it (one later)
        assert resid[0, changed] == pytest.approx(1.0, abs=1e-4)
        assert resid[1, changed + 1] == pytest.approx(1.0, abs=1e-4)
        assert np.nansum(np.abs(resid)) == pytest.approx(2.0, abs=1e-3)


def test_a_last_token_corruption_is_located_at_the_induction_head_only(lab):
    """ "A B A B A" against "A B A B C": the previous-token head's output is the same in both runs (the
    changed token is last, no later position reads it), so patching it restores nothing."""
    scores = lab.patch([lab.prompt("A B A B A", corrupted="A B A B C")], DENOISE).mean_heads()
    assert scores[INDUCTION] == pytest.approx(1.0, abs=1e-4)
    assert np.abs(np.delete(scores.ravel(), INDUCTION[0] * N_HEADS + INDUCTION[1])).max() < 1e-4


@pytest.mark.parametrize("kind", [ZERO, MEAN, RESAMPLE])
def test_the_minimal_circuit_is_those_two_heads(lab, prompts, kind):
    """Necessary and sufficient: ablating either head alone already removes the behaviour, so only
    the sufficiency test (the set alone, the rest mean-ablated) brings in the other."""
    circuit = lab.minimal_circuit(prompts, kind)
    assert circuit.components == CIRCUIT
    assert circuit.found and circuit.sufficient
    assert circuit.kept_when_ablated <= 1 - circuit.threshold
    assert circuit.faithfulness == pytest.approx(1.0, abs=0.1)


def test_a_whole_lab_run_finds_the_circuit(lab):
    from precompute.live.lab_run import run_lab

    settings = LabSettings(tuple(c for c, _ in PAIRS), corrupted=tuple(c for _, c in PAIRS), ablation=MEAN)
    run = run_lab(None, settings, lab=lab)
    assert run.circuit.components == CIRCUIT
    assert {c for c, _ in run.patching.ranked_heads(2)} == set(CIRCUIT)
    assert {c for c, _ in run.ablation.ranked(2)} == set(CIRCUIT)
    assert [a.predictions[0].token for a in run.analyses] == ["B", "G", "B"]


def test_zero_ablation_matches_a_plain_hugging_face_hook(lab, prompts):
    """The induction head zeroed at o_proj's input of the HF module itself, against the lab."""
    hf = lab.bridge.original_model
    layer, index = INDUCTION
    d_head = hf.config.head_dim

    def zero_head(module, args):
        (x,) = args
        x = x.clone()
        x[..., index * d_head : (index + 1) * d_head] = 0
        return (x,)

    prompt = prompts[0]
    handle = hf.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(zero_head)
    try:
        with torch.inference_mode():
            expected = hf(torch.tensor([prompt.token_ids])).logits[0, -1].float().numpy()
    finally:
        handle.remove()
    np.testing.assert_allclose(lab.ablated_logits(prompt, [head(*INDUCTION)], ZERO), expected, atol=1e-4)
