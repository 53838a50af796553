"""Shards merged, and a run stopped and resumed, give the very store one process writes, row for row
(``store_compare``: SQL EXCEPT ALL both ways on every table). On the tiny Llama with its SAE and
heads: every piece of state (examples and their windows, the quantile sample, moments, histograms,
the SAE bridge sums, context clusters, head statistics and head examples) is in those tables."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from store_compare import differing_rows, table_rows
from tiny_llama import STORE_CONTEXT_DIMS, STORE_CTX, STORE_N_LOGITS, STORE_N_NEIGHBORS, examples_config

from neurodash.config import PrecomputeConfig
from precompute import run_precompute
from precompute.pipeline.shard import Shard
from precompute.scale import merge_states, precompute_resumable, precompute_shard

TOKENS, BATCH, BLOCK = 1536, 3, 2  # 16 batches in 8 blocks


def config(model: Path, dataset: Path, sae: Path, out: Path) -> PrecomputeConfig:
    return PrecomputeConfig(
        out=out,
        model=str(model),
        dataset=str(dataset),
        layers=(0, 1),
        tokens=TOKENS,
        ctx=STORE_CTX,
        batch_size=BATCH,
        n_logits=STORE_N_LOGITS,
        n_neighbors=STORE_N_NEIGHBORS,
        examples=examples_config(),
        context_dims=STORE_CONTEXT_DIMS,
        saes=(str(sae),),
        block_batches=BLOCK,
    )


@pytest.fixture(scope="module")
def single_store(tiny_model_dir, docs_jsonl, untrained_sae, tmp_path_factory) -> Path:
    """One process, the plain path (``run_precompute``), moved aside so a merge can write the same path."""
    folder = tmp_path_factory.mktemp("single")
    run_precompute(config(tiny_model_dir, docs_jsonl, untrained_sae, folder / "store.duckdb"), progress=False)
    return (folder / "store.duckdb").rename(folder / "single.duckdb")


@pytest.mark.parametrize("n_shards", [2, 3])
def test_shards_merged_equal_one_process(n_shards, single_store, tiny_model_dir, docs_jsonl, untrained_sae):
    folder = single_store.parent
    out = folder / "store.duckdb"
    cfg = config(tiny_model_dir, docs_jsonl, untrained_sae, out)
    states = [
        precompute_shard(cfg, Shard(i, n_shards), folder / f"shard{i}-of-{n_shards}.state", progress=False)
        for i in reversed(range(n_shards))  # the order they are merged in must not matter
    ]
    out.unlink(missing_ok=True)  # the store's config records --overwrite: the same as the single run's
    merge_states(states, out, progress=False)
    assert differing_rows(single_store, out) == {}
    counts = table_rows(out)
    assert all(
        counts[t] > 0 for t in ("sequences", "units", "examples", "scores", "links", "clusters", "attention")
    )


def test_checkpointed_run_equals_plain_run(single_store, tiny_model_dir, docs_jsonl, untrained_sae):
    """Checkpoints every block change nothing; a checkpoint taken mid-run, resumed, neither."""
    folder = single_store.parent / "resume"
    folder.mkdir()
    out = folder.parent / "store.duckdb"
    cfg = config(tiny_model_dir, docs_jsonl, untrained_sae, out)
    checkpoint = out.with_name(out.name + ".checkpoint")

    class Stop(Exception):
        pass

    import precompute.scale as scale

    saved = scale.state.save
    calls = {"n": 0}

    def save_then_stop(path, header, tensors):
        saved(path, header, tensors)
        calls["n"] += 1
        if calls["n"] == 3:  # a run killed right after its third checkpoint
            shutil.copy(path, folder / "kept.checkpoint")
            raise Stop

    scale.state.save = save_then_stop
    try:
        with pytest.raises(Stop):
            out.unlink(missing_ok=True)
            precompute_resumable(cfg, every_tokens=1, resume=False, progress=False)
    finally:
        scale.state.save = saved
    shutil.copy(folder / "kept.checkpoint", checkpoint)
    out.unlink(missing_ok=True)
    precompute_resumable(cfg, every_tokens=1, resume=True, progress=False)
    assert not checkpoint.exists()
    assert differing_rows(single_store, out) == {}
