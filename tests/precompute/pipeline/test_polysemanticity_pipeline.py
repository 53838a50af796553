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
from precompute.corpus import corpus_documents, pack_windows
from precompute.pipeline.polysemanticity import (
    bimodality,
    combined,
    diversity,
    leader_clusters,
    projection,
)

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
    batches = pack_windows(corpus_documents(str(docs_jsonl))[0], tokenizer, CTX, 64, max_tokens=TOKENS)
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
    """The unit's stored top and quantile examples (a token in both once), strongest first, their
    context clusters, and the scores: each example counted once, then weighted (1 where its label
    recurs, else the square of its activation relative to the strongest)."""
    found = sorted((e for e in store.examples(ref) if e.bucket != "bottom"), key=lambda e: -e.value)
    kept, seen = [], set()
    for e in found:  # a token that is a top example and in the quantile sample counts once
        if (e.seq_id, e.pos) not in seen:
            seen.add((e.seq_id, e.pos))
            kept.append(e)
    valid = np.ones((1, len(kept)), dtype=bool)
    rep = np.stack([reps[e.seq_id, e.pos] for e in kept])[None] - rep_mean if kept else np.zeros((1, 0, DIMS))
    tokens = np.array([[e.token_ids[e.pos - e.start] for e in kept]])
    values = np.array([e.value for e in kept], dtype=np.float64)
    labels = leader_clusters(rep, valid)

    def weights(of: np.ndarray) -> np.ndarray:
        recurs = np.array([(of == x).sum() >= 2 for x in of], dtype=bool)
        return np.where(recurs, 1.0, (values / values.max()) ** 2)[None] if len(of) else np.zeros((1, 0))

    def enough(w: np.ndarray) -> bool:  # Kish's effective sample size
        return len(kept) > 0 and w.sum() ** 2 / (w**2).sum() >= 8

    scores = {
        "context_diversity": diversity(labels, valid)[0],
        "token_diversity": diversity(tokens, valid)[0],
    }
    w_context, w_token = weights(labels[0]), weights(tokens[0])
    weighted_ok = enough(w_context) and enough(w_token)
    scores["context_diversity_weighted"] = (
        diversity(labels, valid, w_context, 0)[0] if weighted_ok else np.nan
    )
    scores["token_diversity_weighted"] = diversity(tokens, valid, w_token, 0)[0] if weighted_ok else np.nan
    return kept, labels[0], scores


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
    checked, weighted, contexts = 0, 0, []
    for unit in range(48):
        ref = UnitRef(sid, unit)
        kept, labels, expected = brute_scores(store, ref, reps, rep_mean)
        scores = store.scores(ref)
        for suffix in ("", "_weighted"):
            context, token = expected[f"context_diversity{suffix}"], expected[f"token_diversity{suffix}"]
            if not np.isfinite(context):  # too little evidence: no diversity score is stored
                assert f"context_diversity{suffix}" not in scores and f"token_diversity{suffix}" not in scores
                assert f"polysemanticity{suffix}" not in scores
                continue
            checked += suffix == ""
            weighted += suffix == "_weighted"
            assert scores[f"context_diversity{suffix}"] == pytest.approx(context, rel=1e-6)
            assert scores[f"token_diversity{suffix}"] == pytest.approx(token, rel=1e-6)
            assert scores[f"polysemanticity{suffix}"] == pytest.approx(
                combined(np.array(context), np.array(token)), rel=1e-6
            )
        if np.isfinite(expected["context_diversity"]):
            contexts.append(expected["context_diversity"])
            clusters = store.clusters(ref)
            assert [clusters[(e.seq_id, e.pos)] for e in kept] == labels.tolist()
    assert checked >= 30 and weighted >= 5
    assert len(set(np.round(contexts, 6))) > 5, "the clusters are not trivial"


def test_a_store_without_clusters_opens_and_reads_them_empty(tmp_path):
    path = tmp_path / "old.duckdb"
    with StoreWriter(path) as w:
        w.flush()  # its queued statements first: the connection is the writer thread's meanwhile
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
    assert store.scores(UnitRef("L0.mlp", 0)).keys() == {"freq_10", "freq_50"}, (
        "only the relative frequencies"
    )
    assert store.clusters(UnitRef("L0.mlp", 0)) == {}
    assert set(store.score_metrics) == {"freq_10", "freq_50", *HEAD_METRICS}, "heads keep their own scores"


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
