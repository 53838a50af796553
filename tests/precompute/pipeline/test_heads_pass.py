"""Ground truth for attention heads in the pass, on the tiny Llama (4 query heads over 2 kv heads):
every stored statistic, example, attention row and score equals brute force over a plain Hugging Face
run (eager attention, ``output_attentions=True``, the input of ``o_proj`` hooked), not TransformerLens."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch
from tiny_llama import D_MODEL, N_HEADS, N_KV_HEADS, STORE_CTX, STORE_N_LOGITS, STORE_TOKENS, examples_config

from neurodash.errors import NeurodashError
from neurodash.storage import Store
from neurodash.units import HEAD, HEAD_METRICS, UnitRef, parse_ref
from precompute.corpus import corpus_documents, pack_windows

CTX, TOKENS, EXAMPLES = STORE_CTX, STORE_TOKENS, examples_config()
D_HEAD = D_MODEL // N_HEADS
LAYERS = (0, 1)


@pytest.fixture(scope="module")
def store(tiny_pipeline_store) -> Store:
    return Store(tiny_pipeline_store)


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager").eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def hf_heads(model, tokens: torch.Tensor) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Per layer: each head's output before o_proj ``[b, pos, head, d_head]`` and its attention
    pattern ``[b, head, q, k]``, straight from Hugging Face."""
    z: dict[int, list] = {}
    hooks = [
        layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a, i=i: z.setdefault(i, []).append(a[0]))
        for i, layer in enumerate(model.model.layers)
    ]
    with torch.no_grad():
        out = model(tokens, output_attentions=True)
    for h in hooks:
        h.remove()
    b, t = tokens.shape
    outputs = {i: torch.cat(a).reshape(b, t, N_HEADS, D_HEAD).numpy() for i, a in z.items()}
    return outputs, {i: a.numpy() for i, a in enumerate(out.attentions)}


@pytest.fixture(scope="module")
def brute(hf, docs_jsonl) -> dict:
    model, tokenizer = hf
    windows = torch.cat(
        [
            b.tokens
            for b in pack_windows(corpus_documents(str(docs_jsonl))[0], tokenizer, CTX, 64, max_tokens=TOKENS)
        ]
    )
    z, pattern = hf_heads(model, windows)
    norms = {layer: np.linalg.norm(z[layer].astype(np.float64), axis=-1) for layer in LAYERS}
    return {"tokens": windows.numpy(), "norm": norms, "pattern": pattern}


def test_heads_are_sources_of_their_own(store):
    assert [s.source_id for s in store.head_sources()] == ["L0.attn", "L1.attn"]
    for layer in LAYERS:
        s = store.source(f"L{layer}.attn")
        assert (s.kind, s.hook, s.layer, s.n_units, s.n_tokens) == (
            HEAD,
            f"blocks.{layer}.attn.hook_z",
            layer,
            N_HEADS,
            TOKENS,
        )
        assert s.config["activation"] == "z_norm"
    assert parse_ref("L1H3", store.sources()) == UnitRef("L1.attn", 3)


@pytest.mark.parametrize("layer", LAYERS)
def test_head_statistics_are_the_norms_of_its_output(store, brute, layer):
    a = brute["norm"][layer][:, 1:].reshape(-1, N_HEADS)  # the BOS query is left out
    frame = store.units_frame(f"L{layer}.attn").set_index("unit")
    np.testing.assert_allclose(frame["max_act"], a.max(0), rtol=1e-4)
    np.testing.assert_allclose(frame["min_act"], a.min(0), rtol=1e-4)
    np.testing.assert_allclose(frame["mean_act"], a.mean(0), rtol=1e-4)
    np.testing.assert_allclose(frame["std_act"], a.std(0), rtol=1e-3)
    np.testing.assert_allclose(frame["density"], (a > 0).mean(0))
    for head in range(N_HEADS):
        stats = store.unit_stats(UnitRef(f"L{layer}.attn", head))
        counts, _ = np.histogram(-a[:, head], bins=-np.array(stats.hist_edges[::-1], dtype=np.float64))
        np.testing.assert_array_equal(counts[::-1], stats.hist_counts)


@pytest.mark.parametrize("layer", LAYERS)
def test_head_examples_and_their_attention_rows(store, brute, layer):
    """Top examples: the sequences with the highest norm (values equal; a window's first tokens may
    repeat in another window, so ties are compared by value); every example of every bucket: its
    norms over the window and its query's attention row over the window, and the mass before it."""
    norms, pattern = brute["norm"][layer], brute["pattern"][layer]
    for head in range(N_HEADS):
        ref = UnitRef(f"L{layer}.attn", head)
        per_seq = norms[:, 1:, head].max(1)
        top = store.examples(ref, ["top"])
        np.testing.assert_allclose(
            [e.value for e in top], np.sort(per_seq)[::-1][: EXAMPLES.top_k], rtol=1e-5
        )
        examples = store.examples(ref)
        rows = keyed(store.attention_rows(ref))
        assert set(rows) == {(e.bucket, e.rank) for e in examples}
        assert not store.examples(ref, ["bottom"]), "a norm is never negative"
        assert {e.bucket for e in examples} > {"top"}, "quantile groups too"
        for e in examples:
            end = e.start + len(e.acts)
            np.testing.assert_allclose(e.acts, norms[e.seq_id, e.start : end, head], rtol=1e-4, atol=1e-6)
            row = rows[(e.bucket, e.rank)]
            expected = pattern[e.seq_id, head, e.pos]
            np.testing.assert_allclose(row.pattern, expected[e.start : end], atol=1e-6)
            assert row.before == pytest.approx(expected[: e.start].sum(), abs=1e-5)
            assert all(p == 0 for p in row.pattern[e.pos - e.start + 1 :]), "causal: nothing after the query"
        assert set(keyed(store.attention_rows(ref, ["top"]))) == {("top", e.rank) for e in top}


@pytest.mark.parametrize("layer", LAYERS)
def test_corpus_attention_statistics(store, brute, layer):
    """Plain loops over every query row after BOS of every window."""
    tokens, pattern = brute["tokens"], brute["pattern"][layer].astype(np.float64)
    sums = {m: np.zeros(N_HEADS) for m in ("bos", "previous", "same", "distance", "entropy")}
    n = 0
    for s in range(len(tokens)):
        for q in range(1, CTX):
            row = pattern[s, :, q, : q + 1]  # [head, keys up to q]
            same = [k for k in range(q) if tokens[s, k] == tokens[s, q]]
            sums["bos"] += row[:, 0]
            sums["previous"] += row[:, q - 1]
            sums["same"] += row[:, same].sum(1)
            sums["distance"] += (row * (q - np.arange(q + 1))).sum(1)
            sums["entropy"] -= (row * np.log(np.where(row > 0, row, 1))).sum(1)
            n += 1
    frame = store.units_frame(f"L{layer}.attn").set_index("unit")
    for metric, key in (
        ("attn_bos", "bos"),
        ("attn_previous", "previous"),
        ("attn_same_token", "same"),
        ("attn_distance", "distance"),
        ("attn_entropy", "entropy"),
    ):
        np.testing.assert_allclose(frame[metric], sums[key] / n, rtol=1e-5, atol=1e-7, err_msg=metric)


def test_probe_scores_equal_a_plain_loop_over_hf_attention(store, hf, tiny_model_dir):
    """``induction`` and ``previous_token`` on the probe sequences, from HF's own attention."""
    from precompute.heads import BridgeAttention, ProbeConfig, repeated_random_tokens
    from precompute.models import load_model

    tokens = repeated_random_tokens(BridgeAttention(load_model(str(tiny_model_dir))), ProbeConfig())
    R = ProbeConfig().repeat_len
    _, pattern = hf_heads(hf[0], tokens)
    frame = store.heads_frame().set_index(["layer", "head"])
    assert set(HEAD_METRICS) <= set(frame.columns)
    for layer in LAYERS:
        p = pattern[layer].astype(np.float64)
        induction = np.mean([p[:, :, q, q - R + 1].mean(0) for q in range(R + 1, 2 * R + 1)], axis=0)
        previous = np.mean([p[:, :, q, q - 1].mean(0) for q in range(1, 2 * R + 1)], axis=0)
        np.testing.assert_allclose(frame.loc[layer, "induction"], induction, atol=1e-5)
        np.testing.assert_allclose(frame.loc[layer, "previous_token"], previous, atol=1e-5)
        assert ((frame.loc[layer, "copying"] >= 0) & (frame.loc[layer, "copying"] <= 1)).all()


def test_ov_logit_effects_are_the_circuits_diagonal(store, hf):
    """logit(t) = norm1(W_E[t]) W_V^{kv(h)} W_O^h W_U[:, t], kv(h) = h // (n_heads / n_kv)."""
    model, _ = hf
    W_U = (model.model.norm.weight[:, None] * model.lm_head.weight.T).detach().double()
    for layer in LAYERS:
        block = model.model.layers[layer]
        with torch.no_grad():
            x = block.input_layernorm(model.model.embed_tokens.weight).double()  # [vocab, d_model]
        v = (x @ block.self_attn.v_proj.weight.detach().double().T).reshape(-1, N_KV_HEADS, D_HEAD)
        W_O = block.self_attn.o_proj.weight.detach().double().T.reshape(N_HEADS, D_HEAD, D_MODEL)
        for head in range(N_HEADS):
            written = v[:, head // (N_HEADS // N_KV_HEADS)] @ W_O[head]  # [vocab, d_model]
            effects = (written * W_U.T).sum(1).numpy()
            got = store.logit_effects(UnitRef(f"L{layer}.attn", head))
            boosted = [e for e in got if e.sign == "+"]
            suppressed = [e for e in got if e.sign == "-"]
            np.testing.assert_array_equal(
                [e.token_id for e in boosted], np.argsort(-effects)[:STORE_N_LOGITS]
            )
            np.testing.assert_array_equal(
                [e.token_id for e in suppressed], np.argsort(effects)[:STORE_N_LOGITS]
            )
            np.testing.assert_allclose(
                [e.value for e in boosted], np.sort(effects)[::-1][:STORE_N_LOGITS], rtol=1e-4, atol=1e-6
            )


def test_a_store_from_before_heads_still_opens(tiny_pipeline_store, tmp_path):
    old = tmp_path / "old.duckdb"
    shutil.copy(tiny_pipeline_store, old)
    con = duckdb.connect(str(old))
    con.execute("DROP TABLE attention")
    for table in ("sources", "units", "examples", "logits", "scores", "neighbors"):
        con.execute(f"DELETE FROM {table} WHERE source_id LIKE '%.attn'")
    con.close()
    with Store(old) as s:
        assert not s.has_attention
        assert s.head_sources() == []
        assert s.attention_rows(UnitRef("L0.attn", 0)) == []
        assert s.heads_frame().empty
        assert [x.source_id for x in s.sources()] == ["L0.mlp", "L1.mlp", "L1.sae"]


def tiny_config(tiny_model_dir, docs_jsonl, out, **kw):
    from precompute import PrecomputeConfig

    return PrecomputeConfig(
        out=out, model=str(tiny_model_dir), dataset=str(docs_jsonl), tokens=256, ctx=32, scores=False, **kw
    )


def test_no_heads_leaves_them_out(tiny_model_dir, docs_jsonl, tmp_path):
    from precompute import run_precompute

    path = run_precompute(tiny_config(tiny_model_dir, docs_jsonl, tmp_path / "s.duckdb", heads=False), False)
    with Store(path) as s:
        assert s.head_sources() == [] and s.attention_rows(UnitRef("L0.attn", 0)) == []
        assert [x.source_id for x in s.sources()] == ["L0.mlp", "L1.mlp"]


def test_layers_select_the_heads_too(tiny_model_dir, docs_jsonl, tmp_path):
    from precompute import run_precompute

    path = run_precompute(tiny_config(tiny_model_dir, docs_jsonl, tmp_path / "s.duckdb", layers=(1,)), False)
    with Store(path) as s:
        assert [x.source_id for x in s.sources()] == ["L1.mlp", "L1.attn"]
        # only layer 1: its heads' scores, and its neurons' relative frequencies (kept under --no-scores)
        assert set(s.sql("SELECT DISTINCT source_id FROM scores").fetchall()) == {("L1.attn",), ("L1.mlp",)}


def test_a_model_without_attention_hooks_is_refused(tiny_model_dir, docs_jsonl, tmp_path, monkeypatch):
    from precompute import run_precompute
    from precompute.models import LoadedModel

    real = LoadedModel.has_hook
    monkeypatch.setattr(LoadedModel, "has_hook", lambda self, hook: "attn" not in hook and real(self, hook))
    out = tmp_path / "s.duckdb"
    with pytest.raises(NeurodashError) as e:
        run_precompute(tiny_config(tiny_model_dir, docs_jsonl, out), False)
    assert str(e.value) == (
        f"model {tiny_model_dir} exposes no attention hook 'blocks.0.attn.hook_z' through TransformerBridge: "
        "pass --no-heads to leave heads out"
    )
    assert list(tmp_path.iterdir()) == []


# --- the real model ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_heads_store(tmp_path_factory) -> Path:
    """The embedded model's layers 0-1 over 512 tokens (as the probe store), heads included."""
    from precompute import PrecomputeConfig, run_precompute

    out = tmp_path_factory.mktemp("heads") / "real.duckdb"
    return run_precompute(PrecomputeConfig(out=out, layers=(0, 1), tokens=512, ctx=64), progress=False)


@pytest.mark.model
def test_real_attention_rows_reproduce_a_fresh_forward_pass(real_heads_store, embedded_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir, attn_implementation="eager").eval()
    with Store(real_heads_store) as store:
        assert [s.source_id for s in store.head_sources()] == ["L0.attn", "L1.attn"]
        assert store.source("L1.attn").n_units == 9
        checked = 0
        for layer, head in ((0, 0), (0, 4), (1, 2), (1, 8)):
            ref = UnitRef(f"L{layer}.attn", head)
            rows = keyed(store.attention_rows(ref))
            for e in store.examples(ref, ["top"])[:3]:
                tokens = torch.tensor([store.sequence(e.seq_id)])
                with torch.no_grad():
                    pattern = model(tokens, output_attentions=True).attentions[layer][0, head, e.pos].numpy()
                row = rows[("top", e.rank)]
                np.testing.assert_allclose(row.pattern, pattern[e.start : e.start + len(e.acts)], atol=1e-4)
                assert row.before == pytest.approx(pattern[: e.start].sum(), abs=1e-4)
                checked += 1
        assert checked == 12


def keyed(rows):
    """Attention rows by their example's (bucket, rank)."""
    return {(r.bucket, r.rank): r for r in rows}
