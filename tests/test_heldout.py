"""Fresh held-out text for scoring explanations (``neurodash.heldout``, ``precompute.pipeline.heldout``):

- its windows are disjoint from the store's: each window of both stores is found, by its document
  and offset, in the corpus's token stream rebuilt here from the tokenizer alone, and the held-out
  ones all lie after the store's;
- the held-out store's activations equal a forward pass of the HF model itself over its windows;
- the controls hold on it: neurons planted in a tiny Llama (each fires on one or two tokens, exactly 0
  elsewhere) are explained from the store and score >= 0.9 on the fresh text, an explanation
  shuffled to the other unit scores near 0, and the most wrong tokens are real held-out tokens.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from tiny_llama import STORE_CTX, STORE_TOKENS, examples_config

from neurodash.errors import NeurodashError
from neurodash.explain import PATTERN, score, scored
from neurodash.explain_run import _unit_texts, explain_store
from neurodash.heldout import FRESH, STORE_WINDOWS, HeldOutText, fresh_heldout, heldout_path
from neurodash.storage import Store
from neurodash.storage.explanations import Explanations
from neurodash.units import UnitRef
from precompute.corpus import corpus_documents

HELD_TOKENS = 1024


@pytest.fixture(scope="module")
def main_store(tiny_pipeline_store, tmp_path_factory):
    """The tiny pipeline store, linked into a folder of this module's own (the held-out store goes beside it)."""
    link = tmp_path_factory.mktemp("heldout") / "tiny.duckdb"
    link.symlink_to(tiny_pipeline_store)
    return link


@pytest.fixture(scope="module")
def held(main_store) -> HeldOutText:
    return fresh_heldout(main_store, layers=(1,), tokens=HELD_TOKENS, progress=False)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def windows_of(path) -> list[tuple[int, int, int, list[int]]]:
    with Store(path) as store:
        rows = store.sql("SELECT seq_id, doc_id, start, token_ids FROM sequences ORDER BY seq_id").fetchall()
    return [(s, d, o, list(t)) for s, d, o, t in rows]


def test_the_heldout_windows_follow_the_stores_in_the_corpus_and_never_overlap_them(
    main_store, held, tokenizer, docs_jsonl
):
    docs, _ = corpus_documents(str(docs_jsonl))  # the documents the pipeline reads, in its order
    stream, doc_start = [], []
    for doc in docs:  # documents joined by EOS, as the tokenizer alone makes them
        ids = tokenizer(doc["text"], add_special_tokens=False)["input_ids"]
        if ids and stream:
            stream.append(tokenizer.eos_token_id)
        doc_start.append(len(stream))
        stream.extend(ids)
    body = STORE_CTX - 1

    def span(window) -> range:
        _, doc, offset, ids = window
        assert ids[0] == tokenizer.bos_token_id
        at = doc_start[doc] + offset
        at = at if stream[at : at + body] == ids[1:] else at - 1  # a window may start on the separator
        assert stream[at : at + body] == ids[1:]
        return range(at, at + body)

    mine, fresh = windows_of(main_store), windows_of(held.path)
    assert len(mine) == STORE_TOKENS // STORE_CTX and len(fresh) == HELD_TOKENS // STORE_CTX
    used = set().union(*(span(w) for w in mine))
    fresh_spans = [span(w) for w in fresh]
    assert all(not used & set(s) for s in fresh_spans)
    assert min(s.start for s in fresh_spans) >= max(used) + 1
    assert [w[0] for w in fresh] == list(
        range(len(mine), len(mine) + len(fresh))
    )  # their place in the corpus
    assert held.skip_tokens == STORE_TOKENS and held.n_tokens == HELD_TOKENS


def hf_mlp_acts(model_dir, tokens: np.ndarray, layer: int) -> np.ndarray:
    """The input of ``down_proj`` in ``layer`` over ``tokens``, straight from HF."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    kept = {}
    hook = model.model.layers[layer].mlp.down_proj.register_forward_pre_hook(lambda m, a: kept.update(x=a[0]))
    with torch.no_grad():
        model(torch.from_numpy(tokens))
    hook.remove()
    return kept["x"].numpy().astype(np.float64)


def test_the_heldout_store_holds_what_the_model_computes_on_its_windows(held, tiny_model_dir, untrained_sae):
    from sae_lens import SAE

    fresh = windows_of(held.path)
    tokens = np.array([w[3] for w in fresh])
    neurons = hf_mlp_acts(tiny_model_dir, tokens, 1)
    sae = SAE.load_from_disk(str(untrained_sae))
    with torch.no_grad():
        features = sae.encode(torch.from_numpy(neurons).float()).numpy().astype(np.float64)
    row = {w[0]: i for i, w in enumerate(fresh)}
    with Store(held.path) as store:
        assert [s.source_id for s in store.sources()] == ["L1.mlp", "L1.sae"]  # the layer asked, no heads
        for source_id, acts in (("L1.mlp", neurons), ("L1.sae", features)):
            frame = store.units_frame(source_id).set_index("unit")
            truth = acts[:, 1:, :].reshape(-1, acts.shape[-1])  # BOS left out, as the store does
            np.testing.assert_allclose(frame["max_act"], truth.max(0), rtol=1e-4, atol=1e-5)
            for unit in range(0, acts.shape[-1], 5):
                for e in store.examples(UnitRef(source_id, unit)):
                    got = acts[row[e.seq_id], e.start : e.start + len(e.acts), unit]
                    np.testing.assert_allclose(e.acts, got, rtol=1e-4, atol=1e-5)


def test_a_matching_heldout_store_is_used_again_and_another_is_built(main_store, held):
    made = held.path.stat().st_mtime_ns
    again = fresh_heldout(main_store, layers=(1,), tokens=HELD_TOKENS, progress=False)
    assert again == held and held.path.stat().st_mtime_ns == made
    out = main_store.with_name("other.heldout.duckdb")
    both = fresh_heldout(main_store, layers=(0, 1), tokens=STORE_CTX * 4, out=out, progress=False)
    assert both.n_tokens == STORE_CTX * 4
    with Store(out) as store:
        assert {s.source_id for s in store.sources()} == {"L0.mlp", "L1.mlp", "L1.sae"}


def test_heads_are_refused_on_fresh_text_with_one_line(main_store):
    with pytest.raises(NeurodashError, match="attention heads are scored on the store's own windows"):
        explain_store(main_store, units=["L0H1"], fresh_tokens=HELD_TOKENS)
    assert not Explanations.beside(main_store).path.exists()


# --- the controls, on neurons planted in a tiny Llama --------------------------------------------


@pytest.fixture(scope="module")
def triggers(tokenizer, docs_jsonl) -> tuple[int, int, int]:
    """Three tokens of the corpus, each about 1 in 50: X (neuron 0), Y and Z (neuron 1)."""
    docs, _ = corpus_documents(str(docs_jsonl))
    counts = Counter(t for d in docs for t in tokenizer(d["text"], add_special_tokens=False)["input_ids"])
    total = sum(counts.values())
    near = sorted(counts, key=lambda t: abs(counts[t] / total - 0.02))
    return near[0], near[1], near[2]


@pytest.fixture(scope="module")
def planted_store(tiny_model_dir, triggers, docs_jsonl, tmp_path_factory):
    """A store of layer 0 of the tiny Llama with neurons planted: 0 fires on X, 1 on Y and on Z (the
    same value), every other neuron never (their gates read nothing)."""
    from transformers import AutoModelForCausalLM

    from precompute import PrecomputeConfig, run_precompute

    folder = tmp_path_factory.mktemp("planted-llama")
    shutil.copytree(tiny_model_dir, folder, dirs_exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(folder)
    x, y, z = triggers
    with torch.no_grad():
        embed = model.model.embed_tokens.weight
        embed[:, :2] = 0  # dimension 0 marks X, 1 marks Y and Z
        embed[z] = embed[y]
        embed[x, 0] = embed[y, 1] = embed[z, 1] = 1.0
        layer = model.model.layers[0]
        layer.self_attn.o_proj.weight.zero_()  # the MLP reads the token's embedding alone
        mlp = layer.mlp
        for w in (mlp.gate_proj.weight, mlp.up_proj.weight):
            w.zero_()
        mlp.gate_proj.weight[0, 0] = mlp.gate_proj.weight[1, 1] = 8.0
        mlp.up_proj.weight[0, 0] = mlp.up_proj.weight[1, 1] = 4.0
    model.save_pretrained(folder)
    out = tmp_path_factory.mktemp("planted") / "planted.duckdb"
    cfg = PrecomputeConfig(
        out=out,
        model=str(folder),
        dataset=str(docs_jsonl),
        layers=(0,),
        tokens=STORE_TOKENS,
        ctx=STORE_CTX,
        examples=dataclasses.replace(examples_config(), top_k=20),  # 10 shown: Y and Z both among them
        heads=False,
        scores=False,
    )
    return run_precompute(cfg, progress=False), folder


def test_the_planted_neurons_fire_on_their_tokens_alone(planted_store, tokenizer, triggers, held):
    _, folder = planted_store
    tokens = np.array([w[3] for w in windows_of(held.path)])  # any windows of the corpus
    acts = hf_mlp_acts(folder, tokens, 0)[:, 1:]
    x, y, z = triggers
    t = tokens[:, 1:]
    assert (acts[:, :, 0] > 1).sum() == (t == x).sum() > 0 and (acts[:, :, 0][t != x] == 0).all()
    assert (acts[:, :, 1][(t == y) | (t == z)] > 1).all() and (acts[:, :, 1][(t != y) & (t != z)] == 0).all()
    assert (acts[:, :, 2:] == 0).all()


def test_planted_neurons_score_at_least_0_9_on_fresh_text_and_shuffled_near_0(planted_store, triggers):
    store_path, _ = planted_store
    summary = explain_store(store_path, layers=(0,), fresh_tokens=STORE_TOKENS)
    assert summary.done == 48
    got = {e.ref.unit: e for e in Explanations.beside(store_path).all(PATTERN)}
    x, y, z = triggers
    for unit, wanted in ((0, {x}), (1, {y, z})):
        e = got[unit]
        assert {t for p in e.patterns() for t in p.triggers} == wanted, e.text
        assert e.correlation is not None and e.correlation >= 0.9
        assert e.precision is not None and e.precision >= 0.9
        assert e.recall is not None and e.recall >= 0.9
        assert e.details["held_out"] == {
            "text": FRESH,
            "file": "planted.heldout.duckdb",
            "skip_tokens": STORE_TOKENS,
            "tokens": STORE_TOKENS,
        }
    held = HeldOutText(heldout_path(store_path), STORE_TOKENS, STORE_TOKENS)
    with Store(store_path) as store:
        texts = {
            t.ref.unit: t for t in _unit_texts(store, [UnitRef("L0.mlp", 0), UnitRef("L0.mlp", 1)], held)
        }
        vocab = store.vocab
    for own, other in ((0, 1), (1, 0)):
        s = score(got[other].patterns(), texts[own], vocab)
        assert s.correlation is not None and abs(s.correlation) < 0.2, (own, other, s.correlation)
        # the most wrong tokens are real tokens of the held-out store, after the store's windows
        assert s.most_wrong
        rows = {w[0]: w[3] for w in windows_of(held.path)}
        for w in s.most_wrong:
            assert w.seq_id >= STORE_TOKENS // STORE_CTX
            assert vocab[rows[w.seq_id][w.pos]] == w.token
            assert "".join(vocab[t] for t in rows[w.seq_id][max(0, w.pos - 8) : w.pos]).endswith(w.context)
    show_wrong_on_the_unit_page(store_path, texts[0], got[1].patterns(), held, vocab)
    again = explain_store(store_path, layers=(0,), fresh_tokens=STORE_TOKENS)
    assert (again.done, again.skipped) == (0, 48)
    own_windows = explain_store(store_path, units=["L0N0"])  # scored on other text: done again
    assert own_windows.done == 1
    (e,) = [e for e in Explanations.beside(store_path).all(PATTERN) if e.ref.unit == 0]
    assert e.details["held_out"] == {"text": STORE_WINDOWS}


def show_wrong_on_the_unit_page(store_path, texts, patterns, held: HeldOutText, vocab) -> None:
    """A wrong explanation of the unit, saved: its panel names the fresh text and shows, in its
    most-wrong table, the held-out tokens the score found."""
    from neurodash.app.panels.explanation import panel

    e = scored(texts, "wrong", "another unit's patterns", patterns, vocab, held_out=held.record())
    Explanations.beside(store_path).save([e])
    said = " ".join(strings(panel(texts.ref, store_path)))
    assert f"fresh text: {STORE_TOKENS:,} corpus tokens after the store's" in said
    assert "planted.heldout.duckdb" in said
    wrong = e.most_wrong()
    assert wrong and all(w.token in said for w in wrong)


def strings(component) -> list[str]:
    """Every string in a Dash component tree."""
    if isinstance(component, str):
        return [component]
    children = getattr(component, "children", None)
    if children is None:
        return []
    if not isinstance(children, (list, tuple)):
        children = [children]
    return [t for c in children for t in strings(c)]
