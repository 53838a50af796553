"""A small hand-built store with every table filled, and what an export of it must hold.

Two neuron sources and an SAE source; windows that start mid-sequence; examples written in random
order; tokens that are hard to carry through CSV, JSON and HTML (``AWKWARD_TOKENS``, ``XSS_TOKENS``);
one unit without examples (``DEAD``). Shared by the export, curated-set, HTML-report and CLI tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from synthetic import XSS_TOKENS

from neurodash.storage import Store, StoreWriter
from neurodash.units import NEURON, SAE_FEATURE, Source, UnitRef

AWKWARD_TOKENS = ("", '"', ",", "\n", "\r\n", "\t", "nan", "NULL", ' a,b"c', "é", "\u2028", "&amp;", "'")
SOURCES = (
    Source("L0.mlp", "test", "blocks.0.mlp.hook_post", NEURON, 0, 6, 192),
    Source("L1.mlp", "test", "blocks.1.mlp.hook_post", NEURON, 1, 6, 192),
    Source("L1.sae.res", "test", "blocks.1.hook_resid_post", SAE_FEATURE, 1, 4, 192, sae="res"),
)
PLAN = [
    ("top", 0),
    ("top", 1),
    ("top", 2),
    ("q0.80", 0),
    ("q0.40", 0),
    ("q0.40", 1),
    ("q0.00", 0),
    ("bottom", 0),
    ("bottom", 1),
]
DEAD = UnitRef("L0.mlp", 5)  # a unit without examples
CTX, WINDOW, N_SEQ = 16, 8, 12
FORMATS = ("csv", "jsonl", "parquet")


def make_small_store(
    path: Path, tokens: tuple[str, ...] = XSS_TOKENS + AWKWARD_TOKENS, seed: int = 0
) -> Path:
    """A small store with every table filled; examples in random order, windows mid-sequence."""
    rng = np.random.default_rng(seed)
    vocab = ["<bos>", *tokens, *(f" w{i}" for i in range(20))]
    with StoreWriter(path, overwrite=True) as w:
        w.set_meta(model="test <b>model</b>", dataset="test-data", ctx=CTX, n_tokens=N_SEQ * CTX)
        w.append(
            "vocab",
            {
                "model": ["test"] * len(vocab),
                "token_id": np.arange(len(vocab), dtype=np.int32),
                "token": vocab,
            },
        )
        w.append(
            "sequences",
            {
                "seq_id": np.arange(N_SEQ, dtype=np.int64),
                "doc_id": np.arange(N_SEQ, dtype=np.int64),
                "start": np.zeros(N_SEQ, dtype=np.int64),
                "token_ids": rng.integers(0, len(vocab), (N_SEQ, CTX), dtype=np.int32),
            },
        )
        examples = []
        for s in SOURCES:
            w.add_source(s)
            w.append("units", _units(s))
            w.append(
                "scores",
                {
                    "source_id": [s.source_id] * s.n_units,
                    "unit": np.arange(s.n_units, dtype=np.int32),
                    "metric": ["polysemanticity"] * s.n_units,
                    "value": np.arange(s.n_units) / 10,
                },
            )
            examples += [
                _example(rng, s.source_id, u, b, r)
                for u in range(s.n_units)
                for b, r in PLAN
                if UnitRef(s.source_id, u) != DEAD
            ]
        rows = [examples[i] for i in rng.permutation(len(examples))]
        w.append("examples", {k: [row[k] for row in rows] for k in rows[0]})
        return w.commit()


def _units(s: Source) -> dict:
    n = s.n_units
    units = np.arange(n)
    return {
        "source_id": [s.source_id] * n,
        "unit": units.astype(np.int32),
        "max_act": (1 + units * 0.5 + s.layer).astype(np.float32),
        "min_act": np.full(n, -0.5, np.float32),
        "mean_act": np.zeros(n, np.float32),
        "std_act": np.ones(n, np.float32),
        "skew": np.zeros(n, np.float32),
        "kurtosis": np.zeros(n, np.float32),
        "density": ((units + 1) / 10).astype(np.float32),
        "n_tokens": np.full(n, N_SEQ * CTX, np.int64),
        "hist_edges": [[0.0, 1.0]] * n,
        "hist_counts": [[1]] * n,
    }


def _example(rng: np.random.Generator, source_id: str, unit: int, bucket: str, rank: int) -> dict:
    start = int(rng.integers(0, CTX - WINDOW + 1))
    acts = rng.normal(0, 1, WINDOW).astype(np.float32)
    acts[0] = 0.1  # not a float32 in decimal: must round-trip exactly anyway
    return {
        "source_id": source_id,
        "unit": unit,
        "bucket": bucket,
        "rank": rank,
        "seq_id": int(rng.integers(0, N_SEQ)),
        "pos": start + int(rng.integers(0, WINDOW)),
        "start": start,
        "acts": acts.tolist(),
    }


def expected_rows(store: Store, refs: list[UnitRef], buckets: list[str] | None = None) -> list[dict]:
    """What an export of ``refs`` must hold, straight from ``Store.examples``."""
    return [
        {
            "unit": str(ref),
            "source_id": ref.source_id,
            "unit_index": ref.unit,
            "layer": store.source(ref.source_id).layer,
            "bucket": e.bucket,
            "rank": e.rank,
            "seq_id": e.seq_id,
            "pos": e.pos,
            "start": e.start,
            "value": e.value,
            "max_token": e.tokens[e.pos - e.start],
            "text": e.text,
            "tokens": list(e.tokens),
            "acts": list(e.acts),
        }
        for ref in refs
        for e in store.examples(ref, buckets)
    ]


def all_refs(store: Store) -> list[UnitRef]:
    return [UnitRef(s.source_id, u) for s in store.sources() for u in range(s.n_units)]


def records(df: pd.DataFrame) -> list[dict]:
    """Rows as plain Python values (a missing note as None)."""
    rows = [
        {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
        for row in df.to_dict("records")
    ]
    for row in rows:
        if "note" in row and not isinstance(row["note"], str):
            row["note"] = None
    return rows


def read_back(path: Path, fmt: str) -> list[dict]:
    if fmt == "parquet":
        return pq.read_table(path).to_pylist()
    if fmt == "jsonl":
        with path.open(encoding="utf-8") as f:  # lines end at \n only: text may hold a raw U+2028
            return [json.loads(line) for line in f]
    df = pd.read_csv(path, keep_default_na=False, dtype={"max_token": str, "text": str})
    df["tokens"] = df["tokens"].map(json.loads)
    df["acts"] = df["acts"].map(json.loads)
    return records(df)
