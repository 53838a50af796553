"""The pipeline's stored polysemanticity scores equal the score functions applied by brute force to
the stored examples and to activations read straight from Hugging Face (tiny Llama)."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest
import torch
from tiny_llama import STORE_CONTEXT_DIMS, STORE_CTX, STORE_TOKENS, examples_config

from neurodash.storage import Store, StoreWriter
from neurodash.units import HEAD_METRICS, UnitRef
from precompute import PrecomputeConfig, run_precompute
from precompute.corpus import load_corpus, pack_windows
from precompute.pipeline.polysemanticity import bimodality, combined, diversity, leader_clusters, projection

CTX, TOKENS, DIMS = STORE_CTX, STORE_TOKENS, STORE_CONTEXT_DIMS
EXAMPLES = examples_config()


@pytest.fixture(scope="module")
def store(tiny_pipeline_store) -> Store:
    return Store(tiny_pipeline_store)


@pytest.fixture(scope="module")
def mlp_inputs(tiny_model_dir, docs_jsonl) -> dict[int, np.ndarray]:
    """Each layer's MLP input, RMS-normalised (before the norm's weight), straight from HF."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    batches = pack_windows(load_corpus(str(docs_jsonl)), tokenizer, CTX, 64, max_tokens=TOKENS)
    windows = torch.cat([b.tokens for b in batches])
    eps = model.config.rms_norm_eps
    seen: dict[int, torch.Tensor] = {}
    hooks = [
        layer.post_attention_layernorm.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(i, a[0]))
        for i, layer in enumerate(model.model.layers)
    ]
    with torch.no_grad():
        model(windows)
    for h in hooks:
        h.remove()
    return {i: (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)).numpy() for i, x in seen.items()}


def brute_scores(store: Store, ref: UnitRef, reps: np.ndarray, rep_mean: np.ndarray):
    """The scores from the unit's stored top and quantile examples, strongest first."""
    kept = sorted((e for e in store.examples(ref) if e.bucket != "bottom"), key=lambda e: -e.value)
    valid = np.ones((1, len(kept)), dtype=bool)
    rep = np.stack([reps[e.seq_id, e.pos] for e in kept])[None] - rep_mean if kept else np.zeros((1, 0, DIMS))
    tokens = np.array([[e.token_ids[e.pos - e.start] for e in kept]])
    labels = leader_clusters(rep, valid)
    return kept, labels[0], diversity(labels, valid)[0], diversity(tokens, valid)[0]


@pytest.mark.parametrize("layer", [0, 1])
def test_stored_scores_equal_brute_force(store, mlp_inputs, layer):
    normed = mlp_inputs[layer]
    reps32 = normed @ projection(normed.shape[-1], DIMS, EXAMPLES.seed)
    rep_mean = reps32[:, 1:].reshape(-1, DIMS).mean(0)  # the BOS position is left out
    reps = reps32.astype(np.float16).astype(np.float32)  # examples keep their projection in half precision
    sid = f"L{layer}.mlp"
    frame = store.units_frame(sid).set_index("unit")
    expected_bimodality = bimodality(frame["skew"].to_numpy(), frame["kurtosis"].to_numpy())
    np.testing.assert_allclose(frame["bimodality"], expected_bimodality, rtol=1e-5)
    checked, contexts = 0, []
    for unit in range(48):
        ref = UnitRef(sid, unit)
        kept, labels, context, token = brute_scores(store, ref, reps, rep_mean)
        scores = store.scores(ref)
        if len(kept) < 8:  # too little evidence: no diversity score is stored
            assert "context_diversity" not in scores and "token_diversity" not in scores
            continue
        checked += 1
        contexts.append(context)
        assert scores["context_diversity"] == pytest.approx(context, rel=1e-6)
        assert scores["token_diversity"] == pytest.approx(token, rel=1e-6)
        assert scores["polysemanticity"] == pytest.approx(
            combined(np.array(context), np.array(token)), rel=1e-6
        )
        clusters = store.clusters(ref)
        assert [clusters[(e.seq_id, e.pos)] for e in kept] == labels.tolist()
    assert checked >= 30
    assert len(set(np.round(contexts, 6))) > 5, "the clusters are not trivial"


def test_a_store_without_clusters_opens_and_reads_them_empty(tmp_path):
    path = tmp_path / "old.duckdb"
    with StoreWriter(path) as w:
        w.con.execute("DROP TABLE clusters")
        w.commit()
    with duckdb.connect(str(path), read_only=True) as con:
        assert "clusters" not in {
            r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
        }
    assert Store(path).clusters(UnitRef("L0.mlp", 0)) == {}


def test_scores_can_be_turned_off(tiny_model_dir, docs_jsonl, tmp_path):
    cfg = PrecomputeConfig(
        out=tmp_path / "bare.duckdb",
        model=str(tiny_model_dir),
        dataset=str(docs_jsonl),
        layers=(0,),
        tokens=256,
        ctx=CTX,
        examples=EXAMPLES,
        scores=False,
    )
    store = Store(run_precompute(cfg, progress=False))
    assert store.scores(UnitRef("L0.mlp", 0)) == {} and store.clusters(UnitRef("L0.mlp", 0)) == {}
    assert set(store.score_metrics) == set(HEAD_METRICS), "heads keep their own scores"


def test_pages_show_the_scores_breakdown_and_rankings(store):
    from app_helpers import find, texts
    from dash import dcc

    from neurodash.app import create_app, routes
    from neurodash.app.pages import overview, unit

    app = create_app(store.path)
    ref = next(
        UnitRef("L1.mlp", u) for u in range(48) if "context_diversity" in store.scores(UnitRef("L1.mlp", u))
    )
    with app.server.test_request_context(routes.unit_href(ref)):
        page = unit.layout(source_id=ref.source_id, index=str(ref.unit))
    shown = texts(page)
    assert {"Polysemanticity", "context clusters", "max tokens", "context 1"} <= set(shown)
    with app.server.test_request_context("/"):
        page = overview.layout()
    assert "Most and least polysemantic" in texts(page)
    links = [c.href for c in find(page, lambda c: isinstance(c, dcc.Link) and c.href.startswith("/unit/"))]
    assert len(links) >= 20
