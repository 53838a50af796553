"""Search by meaning on a store: the time to embed every unit, and a query's server-side latency.

    python benchmarks/search_meaning.py [--store demo.duckdb] [--sample 400] [--queries 30] [--all]

1. Every unit's examples text is built from the store (one query over the top examples).
2. The sentence-embedding model loads, then embeds a random sample of ``--sample`` of those texts (or
   all of them with ``--all``): texts per second, and the time for every unit at that pace.
3. A query's latency, on a file of the store's full size: the sample's real vectors, and a random
   unit vector for every other unit (DuckDB's scan costs the same whatever the values). Each query
   is timed as the server runs it (``search_by_meaning``: embed the query, compare it with every
   vector of the in-memory copy of the file, join the texts and explanations), with its two parts
   apart; and the copy itself, made at the first search after the file changed. Target: under 200 ms.

Nothing is written beside the store: the vectors go to a temporary folder (beside a link to the
store). Speeds are of this machine at the time of the run: compare them side by side.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from neurodash import paths
from neurodash.meaning import examples_texts, search_by_meaning, search_index
from neurodash.storage import Store
from neurodash.storage.embeddings import EMBEDDING_MODEL, Embeddings
from neurodash.storage.schema import EMBEDDING_DIM
from precompute.embed import cached_embedder

QUERIES = [
    "closing brackets",
    "numbers in a list",
    "names of people",
    "import statements",
    "the end of a sentence",
    "function definitions",
    "newlines and indentation",
    "quotation marks",
    "words about time",
    "file paths",
]


def main() -> None:
    args = parse_args()
    store_path = Path(args.store or paths.demo_store_path())
    with tempfile.TemporaryDirectory() as folder:
        linked = Path(folder) / store_path.name
        linked.symlink_to(store_path.resolve())
        run(linked, args)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", help="default: the demo store")
    p.add_argument("--sample", type=int, default=400, help="texts embedded to time (default 400)")
    p.add_argument("--all", action="store_true", help="embed every unit, not a sample")
    p.add_argument("--queries", type=int, default=30, help="queries timed (default 30)")
    return p.parse_args()


def run(store: Path, args: argparse.Namespace) -> None:
    started = time.perf_counter()
    with Store(store) as s:
        texts = examples_texts(s)
    print(
        f"{store.name}: {len(texts):,} units' examples texts built in {time.perf_counter() - started:.1f} s"
    )

    started = time.perf_counter()
    embedder = cached_embedder()
    print(f"model loaded in {time.perf_counter() - started:.1f} s")

    sample = texts if args.all else random.Random(0).sample(texts, min(args.sample, len(texts)))
    started, cpu_started = time.perf_counter(), time.process_time()
    vectors = embedder.embed([t.text for t in sample])
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    rate = len(sample) / seconds
    print(
        f"embedded {len(sample):,} texts in {seconds:.1f} s ({cpu:.1f} CPU s, {torch.get_num_threads()} "
        f"threads): {rate:.1f} texts/s, {len(sample) / cpu:.1f} per CPU second; every unit "
        f"({len(texts):,}) at that pace: {len(texts) / rate / 60:.1f} min ({len(texts) / (len(sample) / cpu) / 60:.1f} CPU min)"
    )

    embeddings = Embeddings.beside(store)
    embeddings.save(sample, vectors, EMBEDDING_MODEL)
    chosen = set(sample)
    rest = [t for t in texts if t not in chosen]
    embeddings.save(rest, random_unit_vectors(len(rest)), EMBEDDING_MODEL)
    print(f"searching {embeddings.count(EMBEDDING_MODEL):,} vectors ({len(rest):,} of them random)")
    time_queries(store, embeddings, args.queries)
    show(store, "closing brackets")


def random_unit_vectors(n: int) -> np.ndarray:
    v = np.random.default_rng(0).normal(size=(n, EMBEDDING_DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def time_queries(store: Path, embeddings: Embeddings, n: int) -> None:
    embedder = cached_embedder()
    started = time.perf_counter()
    index = search_index(embeddings.path)
    index.reader()
    print(
        f"in-memory copy of the vectors (the first search after the file changed): {time.perf_counter() - started:.2f} s"
    )
    search_by_meaning(store, "warm up")
    total, embed, scan = [], [], []
    for i in range(n):
        query = QUERIES[i % len(QUERIES)]
        t0 = time.perf_counter()
        search_by_meaning(store, query)
        t1 = time.perf_counter()
        vector = embedder.embed_one(query)
        t2 = time.perf_counter()
        index.reader().search(vector, EMBEDDING_MODEL)
        t3 = time.perf_counter()
        total.append(t1 - t0)
        embed.append(t2 - t1)
        scan.append(t3 - t2)
    for name, times in (
        ("search_by_meaning", total),
        ("  embed the query", embed),
        ("  DuckDB search", scan),
    ):
        print(f"{name:20s} p50 {ms(statistics.median(times))}  p95 {ms(percentile(times, 95))}")


def show(store: Path, query: str) -> None:
    print(f"{query!r}:")
    for h in search_by_meaning(store, query, limit=5):
        print(f"  {h.similarity:.3f} {h.ref}  {h.text[:100]}")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def ms(seconds: float) -> str:
    return f"{seconds * 1000:6.1f} ms"


if __name__ == "__main__":
    main()
