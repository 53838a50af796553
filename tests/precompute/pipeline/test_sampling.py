"""What a pass reads of its corpus: a seeded sample across all of it by default, in order on request,
and the store's config says which."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_llama import examples_config

from neurodash.cli import build_parser, precompute_config
from neurodash.storage import Store
from precompute import PrecomputeConfig, run_precompute
from precompute.corpus import load_corpus, pack_windows

CTX, TOKENS = 32, 512


def build(tmp_path, model_dir, dataset, name: str, **options) -> Store:
    cfg = PrecomputeConfig(
        out=tmp_path / f"{name}.duckdb",
        model=str(model_dir),
        dataset=str(dataset),
        layers=(0,),
        tokens=TOKENS,
        ctx=CTX,
        examples=examples_config(),
        **options,
    )
    return Store(run_precompute(cfg, progress=False))


def tables(store: Store) -> dict[str, list]:
    return {
        "sequences": store.sql("SELECT * FROM sequences ORDER BY seq_id").fetchall(),
        "units": store.sql("SELECT * EXCLUDE (hist_edges, hist_counts) FROM units ORDER BY unit").fetchall(),
        "examples": store.sql("SELECT * FROM examples ORDER BY unit, bucket, rank").fetchall(),
        "scores": store.sql("SELECT * FROM scores ORDER BY unit, metric").fetchall(),
    }


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_the_same_seed_gives_the_same_store_and_another_seed_another_sample(
    tiny_model_dir, docs_jsonl, tmp_path
):
    first = build(tmp_path, tiny_model_dir, docs_jsonl, "a")
    again = build(tmp_path, tiny_model_dir, docs_jsonl, "b")
    assert tables(first) == tables(again)
    other = build(tmp_path, tiny_model_dir, docs_jsonl, "c", sample_seed=1)
    assert tables(other)["sequences"] != tables(first)["sequences"]
    config = json.loads(first.meta["config"])
    assert config["sampling"] == {"method": "shuffled pieces", "seed": 0, "piece_chars": 2048}
    assert (config["shuffle"], config["sample_seed"]) == (True, 0)
    assert json.loads(other.meta["config"])["sampling"]["seed"] == 1


def test_no_shuffle_reads_the_first_documents_in_order(tiny_model_dir, docs_jsonl, tmp_path, tokenizer):
    store = build(tmp_path, tiny_model_dir, docs_jsonl, "ordered", shuffle=False)
    windows = torch.cat([b.tokens for b in pack_windows(load_corpus(str(docs_jsonl)), tokenizer, CTX, 8)])
    stored = np.array([r[0] for r in store.sql("SELECT token_ids FROM sequences ORDER BY seq_id").fetchall()])
    np.testing.assert_array_equal(stored, windows[: TOKENS // CTX].numpy())
    assert json.loads(store.meta["config"])["sampling"] == {"method": "in order"}


def test_the_cli_options(tmp_path):
    args = build_parser().parse_args(["precompute", "--out", "x.duckdb"])
    assert (args.no_shuffle, args.sample_seed) == (False, 0)
    cfg = precompute_config(
        build_parser().parse_args(["precompute", "--out", "x.duckdb", "--no-shuffle", "--sample-seed", "7"]),
        tmp_path / "x.duckdb",
        overwrite=False,
    )
    assert (cfg.shuffle, cfg.sample_seed) == (False, 7)
