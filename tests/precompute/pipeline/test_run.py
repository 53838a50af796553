"""Ground truth for the whole pipeline on a tiny model: the store equals brute force over HF activations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_llama import (
    SAE_HOOK,
    SAE_WIDTH,
    STORE_CTX,
    STORE_N_LOGITS,
    STORE_N_NEIGHBORS,
    STORE_TOKENS,
    examples_config,
)

from neurodash.storage import Store
from neurodash.units import UnitRef
from precompute.corpus import corpus_documents, pack_windows

CTX, TOKENS, N_LOGITS, N_NEIGHBORS = STORE_CTX, STORE_TOKENS, STORE_N_LOGITS, STORE_N_NEIGHBORS
EXAMPLES = examples_config()


@pytest.fixture(scope="module")
def store(tiny_pipeline_store) -> Store:
    return Store(tiny_pipeline_store)


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(
        tiny_model_dir
    )


@pytest.fixture(scope="module")
def brute(hf, docs_jsonl) -> dict[int, np.ndarray]:
    """Every layer's MLP activation (the input of down_proj) over every window, straight from HF."""
    model, tokenizer = hf
    docs, _ = corpus_documents(str(docs_jsonl))  # the sample the pipeline reads, in its order
    windows = torch.cat([b.tokens for b in pack_windows(docs, tokenizer, CTX, 64, max_tokens=TOKENS)])
    acts: dict[int, list] = {}
    hooks = [
        layer.mlp.down_proj.register_forward_pre_hook(lambda m, a, i=i: acts.setdefault(i, []).append(a[0]))
        for i, layer in enumerate(model.model.layers)
    ]
    with torch.no_grad():
        model(windows)
    for h in hooks:
        h.remove()
    return {"tokens": windows.numpy(), **{i: torch.cat(a).numpy() for i, a in acts.items()}}


def test_sources_and_sequences(store, brute):
    assert [s.source_id for s in store.sources()] == ["L0.mlp", "L1.mlp", "L1.sae", "L0.attn", "L1.attn"]
    s = store.source("L1.mlp")
    assert (s.hook, s.kind, s.n_units, s.n_tokens) == ("blocks.1.mlp.hook_post", "neuron", 48, TOKENS)
    stored = store.sql("SELECT token_ids FROM sequences ORDER BY seq_id").fetchall()
    np.testing.assert_array_equal(np.array([r[0] for r in stored]), brute["tokens"])


@pytest.mark.parametrize("layer", [0, 1])
def test_unit_statistics(store, brute, layer):
    a = brute[layer][:, 1:, :].reshape(-1, 48).astype(np.float64)  # the BOS position is left out
    frame = store.units_frame(f"L{layer}.mlp").set_index("unit")
    np.testing.assert_allclose(frame["max_act"], a.max(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(frame["min_act"], a.min(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(frame["mean_act"], a.mean(0), rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(frame["density"], (a > 0).mean(0), atol=1e-6)
    for metric, fraction in (("freq_10", 0.1), ("freq_50", 0.5)):  # within one histogram bin's share
        exact = (a > fraction * a.max(0)).mean(0)
        bins = [store.unit_stats(UnitRef(f"L{layer}.mlp", u)) for u in range(48)]
        width = np.array([s.hist_edges[1] - s.hist_edges[0] for s in bins])
        near = (np.abs(a - fraction * a.max(0)) <= width).mean(0)  # the tokens in the threshold's bin
        assert (np.abs(frame[metric].to_numpy() - exact) <= near + 1e-9).all()
        assert np.abs(frame[metric].to_numpy() - exact).mean() < 0.01
    assert (frame["freq_50"] <= frame["freq_10"]).all() and (
        frame["freq_10"] <= frame["density"] + 1e-6
    ).all()
    for unit in (0, 17, 47):
        stats = store.unit_stats(UnitRef(f"L{layer}.mlp", unit))
        assert sum(stats.hist_counts) == a.shape[0]
        counts, _ = np.histogram(-a[:, unit], bins=-np.array(stats.hist_edges[::-1], dtype=np.float64))
        np.testing.assert_array_equal(counts[::-1], stats.hist_counts)  # right-closed bins


@pytest.mark.parametrize("layer", [0, 1])
def test_top_and_bottom_examples(store, brute, layer):
    acts = brute[layer]
    for unit in range(0, 48, 5):
        ref = UnitRef(f"L{layer}.mlp", unit)
        for bucket, reduce, sign, k in (
            ("top", np.max, 1, EXAMPLES.top_k),
            ("bottom", np.min, -1, EXAMPLES.bottom_k),
        ):
            per_seq = reduce(acts[:, 1:, unit], axis=1)
            expected = [s for s in np.argsort(-sign * per_seq, kind="stable")[:k] if sign * per_seq[s] > 0]
            examples = store.examples(ref, [bucket])
            assert [e.seq_id for e in examples] == expected
            for e in examples:
                assert e.tokens == store.tokens(brute["tokens"][e.seq_id][e.start : e.start + len(e.acts)])
                np.testing.assert_allclose(
                    e.acts, acts[e.seq_id, e.start : e.start + len(e.acts), unit], rtol=1e-4, atol=1e-6
                )
                assert e.value == pytest.approx(per_seq[e.seq_id], rel=1e-4, abs=1e-6)


def test_quantile_examples_lie_in_their_group(store, brute):
    for unit in range(0, 48, 7):
        ref = UnitRef("L1.mlp", unit)
        groups = {}
        for e in store.examples(ref):
            if e.bucket.startswith("q"):
                assert e.value > 0
                assert e.value == pytest.approx(brute[1][e.seq_id, e.pos, unit], rel=1e-4, abs=1e-6)
                groups.setdefault(e.bucket, []).append(e.value)
        names = sorted(groups)
        assert names == [f"q{g / 3:.2f}" for g in range(len(names))]
        for low, high in zip(names, names[1:]):  # groups are ordered by value
            assert max(groups[low]) <= min(groups[high])


def test_logit_effects_equal_the_direct_product(store, hf):
    model, _ = hf
    W_out = model.model.layers[1].mlp.down_proj.weight.detach().T  # [d_mlp, d_model]
    W_U = model.model.norm.weight.detach()[:, None] * model.lm_head.weight.detach().T
    effects = (W_out @ W_U).numpy()
    for unit in (0, 31):
        got = store.logit_effects(UnitRef("L1.mlp", unit))
        boosted = [e for e in got if e.sign == "+"]
        suppressed = [e for e in got if e.sign == "-"]
        np.testing.assert_array_equal([e.token_id for e in boosted], np.argsort(-effects[unit])[:N_LOGITS])
        np.testing.assert_array_equal([e.token_id for e in suppressed], np.argsort(effects[unit])[:N_LOGITS])
        np.testing.assert_allclose(
            [e.value for e in boosted], np.sort(effects[unit])[::-1][:N_LOGITS], rtol=1e-4
        )


def test_neighbors_by_cosine(store, hf):
    model, _ = hf
    W_out = model.model.layers[0].mlp.down_proj.weight.detach().T
    unit_dirs = torch.nn.functional.normalize(W_out, dim=1)
    cos = (unit_dirs @ unit_dirs.T).numpy()
    np.fill_diagonal(cos, -np.inf)
    got = store.neighbors(UnitRef("L0.mlp", 3))
    assert [r.unit for r, _ in got] == list(np.argsort(-cos[3])[:N_NEIGHBORS])
    np.testing.assert_allclose([c for _, c in got], np.sort(cos[3])[::-1][:N_NEIGHBORS], rtol=1e-5)


@pytest.fixture(scope="module")
def features(brute, untrained_sae) -> np.ndarray:
    from precompute.sae import load_sae

    return load_sae(str(untrained_sae)).encode(torch.from_numpy(brute[1])).numpy()


def test_sae_features_are_a_source(store):
    s = store.source("L1.sae")
    assert (s.kind, s.hook, s.n_units, s.sae) == ("sae_feature", SAE_HOOK, SAE_WIDTH, "tiny-topk")
    assert [x.source_id for x in store.sources() if x.kind != "head"] == ["L0.mlp", "L1.mlp", "L1.sae"]


def test_feature_activations_equal_sae_encode(store, features):
    f = features[:, 1:, :].reshape(-1, SAE_WIDTH).astype(np.float64)
    frame = store.units_frame("L1.sae").set_index("unit")
    np.testing.assert_allclose(frame["max_act"], f.max(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(frame["mean_act"], f.mean(0), rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(frame["density"], (f > 0).mean(0), atol=1e-6)
    for unit in range(SAE_WIDTH):
        examples = store.examples(UnitRef("L1.sae", unit), ["top"])
        per_seq = features[:, 1:, unit].max(1)
        expected = [s for s in np.argsort(-per_seq, kind="stable")[: EXAMPLES.top_k] if per_seq[s] > 0]
        assert [e.seq_id for e in examples] == expected
        for e in examples:
            window = features[e.seq_id, e.start : e.start + len(e.acts), unit]
            np.testing.assert_allclose(e.acts, window, rtol=1e-4, atol=1e-5)
        assert not store.examples(UnitRef("L1.sae", unit), ["bottom"]), "ReLU-type features never go negative"


def test_feature_logits_and_neighbors_use_the_decoder(store, untrained_sae, hf):
    from precompute.sae import load_sae

    model, _ = hf
    W_dec = load_sae(str(untrained_sae)).decoder_directions()
    W_out = model.model.layers[1].mlp.down_proj.weight.detach().T
    W_U = model.model.norm.weight.detach()[:, None] * model.lm_head.weight.detach().T
    effects = (W_dec @ W_out @ W_U).numpy()
    boosted = [e.token_id for e in store.logit_effects(UnitRef("L1.sae", 5)) if e.sign == "+"]
    np.testing.assert_array_equal(boosted, np.argsort(-effects[5])[:N_LOGITS])
    unit_dirs = torch.nn.functional.normalize(W_dec, dim=1)
    cos = (unit_dirs @ unit_dirs.T).numpy()
    np.fill_diagonal(cos, -np.inf)
    assert [r.unit for r, _ in store.neighbors(UnitRef("L1.sae", 5))] == list(
        np.argsort(-cos[5])[:N_NEIGHBORS]
    )


def test_links_between_neurons_and_features(store, untrained_sae, features, brute):
    """Neuron -> features by share of activation mass, token by token; feature -> neurons by share
    of the decoder row."""
    from precompute.sae import load_sae

    W_dec = load_sae(str(untrained_sae)).decoder_directions().double().numpy()  # [24 features, 48 neurons]
    neurons = np.maximum(brute[1][:, 1:, :].reshape(-1, 48), 0).astype(np.float64)
    acts = features[:, 1:, :].reshape(-1, SAE_WIDTH).astype(np.float64)
    mass, strong = np.zeros((48, SAE_WIDTH)), np.zeros((48, SAE_WIDTH))
    for x, a in zip(neurons, acts):  # each token's activation split among the features pushing it up
        written = a[:, None] * np.maximum(W_dec, 0)  # [features, neurons]
        total = written.sum(0)
        split = np.divide(x * written, total, out=np.zeros_like(written), where=total > 0).T
        mass += split
        strong += x[:, None] * split  # weighted by the activation again
    share = mass / mass.sum(1, keepdims=True)
    strong_share = strong / strong.sum(1, keepdims=True)
    scores = store.units_frame("L1.mlp").set_index("unit")
    for neuron in (0, 17, 47):
        links = store.links(UnitRef("L1.mlp", neuron))
        assert [link.ref for link in links] == [UnitRef("L1.sae", f) for f in np.argsort(-share[neuron])[:3]]
        np.testing.assert_allclose(
            [link.share for link in links], np.sort(share[neuron])[::-1][:3], rtol=1e-4
        )
        np.testing.assert_allclose(
            [link.weight for link in links], W_dec[[link.ref.unit for link in links], neuron], rtol=1e-5
        )
        p = share[neuron][share[neuron] > 0]
        assert scores.loc[neuron, "sae_features"] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-4)
        assert scores.loc[neuron, "sae_features_80"] == np.argmax(np.cumsum(np.sort(p)[::-1]) >= 0.8) + 1
        q = strong_share[neuron][strong_share[neuron] > 0]
        assert scores.loc[neuron, "sae_features_strong"] == pytest.approx(
            np.exp(-(q * np.log(q)).sum()), rel=1e-4
        )
    energy = W_dec[5] ** 2 / (W_dec[5] ** 2).sum()
    links = store.links(UnitRef("L1.sae", 5))
    assert [link.ref for link in links] == [UnitRef("L1.mlp", i) for i in np.argsort(-energy)[:3]]
    np.testing.assert_allclose([link.share for link in links], np.sort(energy)[::-1][:3], rtol=1e-4)
    assert store.links(UnitRef("L0.mlp", 3)) == [], "no SAE reads layer 0"


def test_strong_links_are_the_activation_weighted_bridge(store, untrained_sae, features, brute):
    """Neuron -> features by share of its strong firing (``links_strong``) equal
    ``attributed_mass(strong=True)`` over all tokens at once; features have no strong links."""
    from precompute.pipeline.polysemanticity import attributed_mass, feature_shares
    from precompute.sae import load_sae

    W_dec = load_sae(str(untrained_sae)).decoder_directions().double()  # [24 features, 48 neurons]
    neurons = torch.from_numpy(brute[1][:, 1:, :].reshape(-1, 48)).double()
    acts = torch.from_numpy(features[:, 1:, :].reshape(-1, SAE_WIDTH)).double()
    share = feature_shares(attributed_mass(neurons, acts, W_dec, strong=True).numpy())
    whole = feature_shares(attributed_mass(neurons, acts, W_dec).numpy())
    differ = 0
    for neuron in range(48):
        links = store.links(UnitRef("L1.mlp", neuron), strong=True)
        top = np.argsort(-share[neuron], kind="stable")[: len(links)]
        assert len(links) == min(N_NEIGHBORS, int((share[neuron] > 0).sum()))
        np.testing.assert_allclose([link.share for link in links], share[neuron][top], rtol=1e-4)
        assert {link.ref.unit for link in links} == set(top), "ties aside, the same features"
        np.testing.assert_allclose(
            [link.weight for link in links],
            W_dec.numpy()[[link.ref.unit for link in links], neuron],
            rtol=1e-5,
        )
        differ += [link.ref for link in links] != [
            link.ref for link in store.links(UnitRef("L1.mlp", neuron))
        ]
        differ += not np.allclose([link.share for link in links], np.sort(whole[neuron])[::-1][: len(links)])
    assert differ, "the strong bridge is not the whole-mass one"
    assert store.links(UnitRef("L1.sae", 5), strong=True) == []


def test_frozen_heap_lets_go_of_the_heap_when_the_block_ends_even_by_an_error():
    """What a run froze is let go when it ends, however it ends; inside a heap frozen already (the
    app's server freezes its start-up heap) the run leaves it frozen."""
    import gc

    from precompute.pipeline.run import frozen_heap

    was_frozen = gc.get_freeze_count() > 0
    gc.unfreeze()  # as in a process that froze nothing
    try:
        with pytest.raises(RuntimeError), frozen_heap():
            assert gc.get_freeze_count() > 0
            raise RuntimeError("a run that fails")
        assert gc.get_freeze_count() == 0
        gc.freeze()
        with frozen_heap():
            pass
        assert gc.get_freeze_count() > 0
    finally:
        gc.freeze() if was_frozen else gc.unfreeze()
