"""Shared fixtures. Models are session-scoped: a tiny Llama built here, and the real embedded one."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest

# --- pipeline fixtures -----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    try:
        import torch

        torch.manual_seed(0)
    except ImportError:
        pass


@pytest.fixture(autouse=True, scope="module")
def _stop_model_workers():
    """The model workers the module's apps started end with it (each holds a model in memory)."""
    yield
    from neurodash.app import model_worker

    model_worker.stop_all()


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    """The real SmolLM2-135M-Instruct, converted once into $NEURODASH_HOME (default ~/.cache/neurodash)."""
    from precompute.models import embedded_model_folder

    return embedded_model_folder()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama with random weights and a small BPE tokenizer, both built here (tiny_llama.py):
    fast, the same code path, and no need of the real model."""
    from tiny_llama import write_model, write_tokenizer

    folder = tmp_path_factory.mktemp("tiny-llama")
    return write_model(write_tokenizer(folder))


@pytest.fixture(scope="session")
def untrained_sae(tmp_path_factory) -> Path:
    """An untrained TopK SAE (24 features, k 4) on the tiny Llama's last MLP, saved by SAELens."""
    from tiny_llama import save_untrained_sae

    return save_untrained_sae(tmp_path_factory.mktemp("sae") / "tiny-topk")


@pytest.fixture(scope="session")
def tiny_pipeline_store(tiny_model_dir, docs_jsonl, untrained_sae, tmp_path_factory) -> Path:
    """The tiny Llama's two MLP layers and the untrained SAE's features, precomputed over 1536 tokens
    (settings in tiny_llama.py): the pipeline's ground-truth tests read it, never write it."""
    from tiny_llama import write_pipeline_store

    out = tmp_path_factory.mktemp("pipeline") / "tiny.duckdb"
    return write_pipeline_store(out, tiny_model_dir, docs_jsonl, untrained_sae)


@pytest.fixture(scope="session")
def docs_jsonl(tmp_path_factory) -> Path:
    """A small real corpus: the first documents of the embedded python-docs, as JSON lines."""
    from precompute.corpus import python_docs

    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    with path.open("w") as f:
        for doc in itertools.islice(python_docs(), 40):
            f.write(json.dumps({"text": doc["text"][:4000], "source": doc["source"]}) + "\n")
    return path


# --- app fixtures (the dashboard: neurodash/app) ---------------------------------------------


@pytest.fixture(scope="session")
def synthetic_store(tmp_path_factory) -> Path:
    """3 layers x 40 units, 45 examples each, a score metric, and the XSS tokens in every example."""
    from synthetic import XSS_TOKENS, make_synthetic_store

    path = tmp_path_factory.mktemp("app") / "synthetic.duckdb"
    return make_synthetic_store(
        path, n_layers=3, n_units=40, tokens=XSS_TOKENS, score_metrics=("polysemanticity",)
    )


@pytest.fixture(scope="session")
def heads_store(tmp_path_factory) -> Path:
    """As ``synthetic_store``, plus 4 attention heads on each of its 3 layers (``L{layer}.attn``)."""
    from synthetic import XSS_TOKENS, make_synthetic_store

    path = tmp_path_factory.mktemp("app") / "heads.duckdb"
    return make_synthetic_store(
        path,
        n_layers=3,
        n_units=40,
        tokens=XSS_TOKENS,
        score_metrics=("polysemanticity",),
        head_layers=(0, 1, 2),
    )


@pytest.fixture(scope="session")
def small_store(tmp_path_factory) -> Path:
    """The small hand-built store of small_store.py (awkward tokens, windows mid-sequence), read only."""
    from small_store import make_small_store

    return make_small_store(tmp_path_factory.mktemp("small") / "store.duckdb")


@pytest.fixture(scope="session")
def probe_store(tmp_path_factory) -> Path:
    """A tiny store of the real embedded model (layer 0, 512 tokens), for the text probe."""
    from precompute import PrecomputeConfig, run_precompute

    path = tmp_path_factory.mktemp("app") / "probe.duckdb"
    return run_precompute(PrecomputeConfig(out=path, layers=(0,), tokens=512, ctx=64), progress=False)


@pytest.fixture(scope="session")
def trained_sae(tiny_model_dir, docs_jsonl, tmp_path_factory):
    """A TopK SAE (96 features, k 8) trained by ``train_sae`` on the tiny Llama's last MLP over 4096
    tokens of python-docs, with its held-out metrics; read only."""
    from tiny_llama import tiny_sae_config

    from precompute.sae import train_sae

    out = tmp_path_factory.mktemp("sae") / "tiny-sae"
    return train_sae(tiny_sae_config(out, tiny_model_dir, docs_jsonl), progress=False)


@pytest.fixture(scope="session")
def tiny_store(tiny_model_dir, docs_jsonl, trained_sae, tmp_path_factory) -> Path:
    """A store of the tiny Llama (layers 0-1) with the features of the trained SAE on its last MLP."""
    from precompute import PrecomputeConfig, run_precompute

    return run_precompute(
        PrecomputeConfig(
            out=tmp_path_factory.mktemp("maximize") / "tiny.duckdb",
            model=str(tiny_model_dir),
            dataset=str(docs_jsonl),
            layers=(0, 1),
            tokens=2048,
            ctx=64,
            saes=(str(trained_sae.path),),
        ),
        progress=False,
    )


def pytest_setup_options():
    """Headless Chromium for ``dash_duo`` (root, no network, no GPU)."""
    from app_screenshot import chrome_options

    return chrome_options()


@pytest.fixture(scope="session")
def tiny_lab_run(tiny_store):
    """A circuit-lab run on the tiny Llama of ``tiny_store`` (two prompts, a head and a neuron steered)."""
    from neurodash.lab_run import LabSettings, parse_steer
    from precompute.live.lab_run import run_lab

    settings = LabSettings(("A B A B A", "X Y X Y X"), steer=(parse_steer("L1H2=3"), parse_steer("L1N5=2")))
    return run_lab(tiny_store, settings)


@pytest.fixture(scope="session")
def meaning_store(synthetic_store, tmp_path_factory) -> Path:
    """A copy of ``synthetic_store`` whose units are embedded for search by meaning (the explanations
    file beside it); read only."""
    import shutil

    from neurodash.meaning import embed_store

    path = tmp_path_factory.mktemp("meaning") / "synthetic.duckdb"
    shutil.copy(synthetic_store, path)
    embed_store(path)
    return path
