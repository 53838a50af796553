"""The circuit lab on the real model: identities that must hold exactly, agreement with a plain Hugging
Face forward hook, batched against one-at-a-time ablation, and the bad-input messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neurodash.errors import NeurodashError
from neurodash.lab import DENOISE, EMBED, MEAN, NOISE, RESAMPLE, ZERO, head, mlp, neuron

pytestmark = pytest.mark.model
PROMPT = "cat dog cat dog cat"


@pytest.fixture(scope="module")
def lab():
    """One torch thread here: on the shared 2-core machine two threads wait on each other (10x slower)."""
    from precompute.live.lab import Lab
    from precompute.live.probe import cached_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Lab(cached_model())
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prompt(lab):
    return lab.prompt(PROMPT)


@pytest.fixture(scope="module")
def contrast(lab):
    return lab.prompt(PROMPT, answer=" dog", counterfactual=" cat", corrupted="cat dog cat dog bird")


def test_default_answer_is_the_top_prediction(lab, prompt):
    analysis = lab.analyse(prompt)
    assert prompt.answer == " dog" == analysis.predictions[0].token
    assert len(analysis.predictions) == 10
    assert sum(p.prob for p in analysis.predictions) <= 1.0
    assert analysis.attention.patterns.shape == (lab.n_layers, lab.n_heads, 6, 6)
    np.testing.assert_allclose(analysis.attention.patterns.sum(-1), 1.0, atol=1e-5)


def test_logit_lens_at_the_last_layer_is_the_models_output(lab, prompt):
    logits = lab.model.forward(torch.tensor([prompt.token_ids]))[0].float()
    probs = logits.softmax(-1)
    lens = lab.logit_lens(prompt)
    assert lens.answer_prob.shape == (lab.n_layers, len(prompt.token_ids))
    np.testing.assert_array_equal(lens.top_token_ids[-1], logits.argmax(-1).numpy())
    np.testing.assert_allclose(lens.answer_prob[-1], probs[:, prompt.answer_id].numpy(), atol=1e-6)
    ranks = (logits > logits[:, prompt.answer_id : prompt.answer_id + 1]).sum(-1).numpy()
    np.testing.assert_array_equal(lens.answer_rank[-1], ranks)
    assert lens.answer_rank[-1, -1] == 0


@pytest.mark.parametrize("which", ["prompt", "contrast"])
def test_direct_attributions_sum_to_the_metric(lab, which, request):
    p = request.getfixturevalue(which)
    attribution = lab.attribution(p)
    logits = lab.model.forward(torch.tensor([p.token_ids]))[0, -1].float()
    expected = logits[p.answer_id] - (0 if p.counterfactual_id is None else logits[p.counterfactual_id])
    assert attribution.metric == pytest.approx(float(expected), abs=1e-3)
    assert attribution.total == pytest.approx(attribution.metric, abs=1e-3)
    assert attribution.heads.shape == (lab.n_layers, lab.n_heads)


@pytest.mark.parametrize("which", ["prompt", "contrast"])
def test_neuron_attributions_sum_to_their_mlps(lab, which, request):
    p = request.getfixturevalue(which)
    neurons = lab.neuron_attribution(p)
    assert neurons.shape == (lab.n_layers, lab.model.d_mlp)
    np.testing.assert_allclose(neurons.sum(1), lab.attribution(p).mlps, atol=2e-3)  # Llama: no b_out
    top = lab.top_neurons([p], 5)
    values = [abs(neurons[n.layer, n.index]) for n in top]
    assert values == sorted(values, reverse=True) and values[-1] >= np.sort(np.abs(neurons), axis=None)[-5]


def test_patching_everything_gives_one_and_nothing_zero(lab, contrast):
    everything = [EMBED, *lab.components()]
    assert lab.patched_metric(contrast, everything) == pytest.approx(1.0, abs=1e-4)
    assert lab.patched_metric(contrast, []) == pytest.approx(0.0, abs=1e-4)
    assert lab.patched_metric(contrast, everything, NOISE) == pytest.approx(0.0, abs=1e-4)
    assert lab.patched_metric(contrast, [], NOISE) == pytest.approx(1.0, abs=1e-4)
    result = lab.patch([contrast], DENOISE, layers=[0, lab.n_layers - 1])
    # the residual stream at layer 0 holds nothing but the token: patching the changed one is enough
    assert result.resid[0][0, -1] == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(result.resid[0][0, :-1], 0.0, atol=1e-4)
    assert result.resid[0][-1, -1] == pytest.approx(1.0, abs=1e-4)  # the last layer, the last position


def test_head_zero_ablation_matches_a_plain_hugging_face_hook(lab, prompt):
    from transformers import AutoModelForCausalLM

    from precompute.models import embedded_model_folder

    hf = AutoModelForCausalLM.from_pretrained(embedded_model_folder(), dtype=torch.float32).eval()
    layer, index, d_head = 9, 4, hf.config.head_dim

    def zero_head(module, args):
        (x,) = args
        x = x.clone()
        x[..., index * d_head : (index + 1) * d_head] = 0
        return (x,)

    handle = hf.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(zero_head)
    try:
        with torch.inference_mode():
            expected = hf(torch.tensor([prompt.token_ids])).logits[0, -1].float().numpy()
    finally:
        handle.remove()
    ablated = lab.ablated_logits(prompt, [head(layer, index)], ZERO)
    np.testing.assert_allclose(ablated, expected, atol=2e-3)
    clean = lab.model.forward(torch.tensor([prompt.token_ids]))[0, -1].float().numpy()
    assert np.abs(ablated - clean).max() > 0.01  # the ablation did something


@pytest.mark.parametrize("kind", [ZERO, MEAN, RESAMPLE])
def test_batched_ablation_equals_one_at_a_time(lab, contrast, kind):
    means = lab.mean_activations(["the quick brown fox", PROMPT, "1 2 3 4 5"])
    neurons = [neuron(20, 7), neuron(20, 100)]
    result = lab.ablate([contrast], kind, neurons=neurons, means=means, layers=[2, 20])
    for comp, effect in [
        (head(2, 0), result.heads[0, 2, 0]),
        (head(20, 8), result.heads[0, 20, 8]),
        (mlp(20), result.mlps[0, 20]),
        (neurons[1], result.neuron_effects[0, 1]),
    ]:
        one = lab.ablated_metric(contrast, [comp], kind, means) - result.clean_metric[0]
        assert effect == pytest.approx(one, abs=1e-3), comp
    assert np.isnan(result.heads[0, 3]).all()  # a layer not asked for
    assert result.ranked(top=5)[0][1] == np.nanmin(np.concatenate([result.heads[0].ravel(), result.mlps[0]]))


def test_steering_with_coefficient_zero_reproduces_the_generation(lab, prompt):
    hook, direction = lab.neuron_direction(15, 631)
    run = lab.steer(prompt, hook, direction, 0.0, n_tokens=6)
    assert run.steered_ids == run.unsteered_ids and len(run.unsteered_ids) == 6
    pushed = lab.steer(prompt, *lab.head_direction(prompt, 20, 0), 200.0, n_tokens=6)
    assert pushed.unsteered_ids == run.unsteered_ids and pushed.steered_ids != run.unsteered_ids

    sweep = lab.steering_sweep(prompt, hook, direction, [0.0, 5.0], unit=("blocks.15.mlp.hook_post", 631))
    clean_prob = lab.analyse(prompt).lens.answer_prob[-1, -1]
    assert sweep.answer_prob[0] == pytest.approx(clean_prob, abs=1e-5)
    assert sweep.unit_activation is not None
    # steering at the MLP output leaves the neuron itself (read before its output) untouched
    assert sweep.unit_activation[0] == pytest.approx(sweep.unit_activation[1], abs=1e-5)


def test_bad_input_is_one_clear_line(lab):
    with pytest.raises(NeurodashError, match="prompt is empty"):
        lab.prompt("  ")
    with pytest.raises(NeurodashError, match="reads at most"):
        lab.prompt("a " * (lab.n_ctx + 10), answer=" a")
    with pytest.raises(NeurodashError, match=r"not one token: it splits into 'abc', 'def'|not one token"):
        lab.prompt(PROMPT, answer=" dogfishcatbird")
    with pytest.raises(NeurodashError, match="has 4 tokens, the prompt .* 5"):
        lab.prompt(PROMPT, answer=" dog", corrupted="cat dog cat dog")
    with pytest.raises(NeurodashError, match="unknown corruption"):
        lab.prompt(PROMPT, answer=" dog", corruption="shuffle")


def test_minimal_circuit_does_what_it_claims(lab, contrast):
    means = lab.mean_activations(["the quick brown fox", PROMPT, "A B C D E"])
    circuit = lab.minimal_circuit([contrast], MEAN, means=means, kinds=("head",))
    assert circuit.found and all(c.kind == "head" for c in circuit.components)
    clean, corrupt = lab.metrics(contrast)
    ablated = lab.ablated_metric(contrast, circuit.components, MEAN, means)  # the plain, unbatched path
    kept = (ablated - corrupt) / (clean - corrupt)
    assert kept == pytest.approx(circuit.kept_when_ablated, abs=1e-3)
    assert kept <= 1 - circuit.threshold
    for c in circuit.components:  # greedy pruning: no member can be dropped
        rest = [x for x in circuit.components if x != c]
        if rest:
            assert (lab.ablated_metric(contrast, rest, MEAN, means) - corrupt) / (clean - corrupt) > 0.2
