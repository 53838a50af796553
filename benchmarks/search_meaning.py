"""Search by meaning on a store: the time to embed every unit, and a query's latency, server-side and
over HTTP.

    python benchmarks/search_meaning.py [--store demo.duckdb] [--sample 400] [--queries 30] [--all]
    python benchmarks/search_meaning.py --embedded [--store demo.duckdb] [--queries 30]

1. Every unit's examples text is built from the store (one query over the top examples).
2. The sentence-embedding model loads, then embeds a random sample of ``--sample`` of those texts (or
   all of them with ``--all``): texts per second, and the time for every unit at that pace.
3. A query's latency, on a file of the store's full size: the sample's real vectors, and a random
   unit vector for every other unit (DuckDB's scan costs the same whatever the values). Each query
   is timed as the server runs it (``search_by_meaning``: embed the query, compare it with every
   vector of the in-memory copy of the file, join the texts and explanations), with its two parts
   apart; and the copy itself, made at the first search after the file changed. Target: under 200 ms.
4. The same queries over HTTP: ``neurodash serve`` on a free port, the query box's callback posted as
   the browser posts it (the table of units back), p50 / p95 from post to answer.

With ``--embedded``, steps 1-2 are skipped and steps 3-4 search the store's own embeddings (``neurodash
embed STORE`` made them); otherwise nothing is written beside the store: the vectors go to a
temporary folder (beside a link to the store). Speeds are of this machine at the time of the run:
compare them side by side.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from load import HOST, served  # noqa: E402

from neurodash import paths  # noqa: E402
from neurodash.app import ids  # noqa: E402
from neurodash.meaning import examples_texts, search_by_meaning, search_index  # noqa: E402
from neurodash.storage import Store  # noqa: E402
from neurodash.storage.embeddings import EMBEDDING_MODEL, Embeddings  # noqa: E402
from neurodash.storage.schema import EMBEDDING_DIM  # noqa: E402
from precompute.embed import cached_embedder  # noqa: E402

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
    if args.embedded:
        embeddings = Embeddings.beside(store_path)
        print(
            f"searching the {embeddings.count(EMBEDDING_MODEL):,} vectors of {embeddings.path} (load {load()})"
        )
        time_queries(store_path, embeddings, args.queries)
        time_http(store_path, args.queries)
        return
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
    p.add_argument("--embedded", action="store_true", help="search the store's own embeddings (no embedding)")
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
    time_http(store, args.queries)
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


def time_http(store: Path, n: int) -> None:
    """p50 / p95 of ``n`` queries posted to ``neurodash serve`` as the query box posts them."""
    with served(store) as (port, _):
        first = post_query(port, "warm up")  # the server warms its encoder at start-up, in a thread
        times = [post_query(port, QUERIES[i % len(QUERIES)]) for i in range(n)]
    print(
        f"over HTTP (neurodash serve, loopback): first query {ms(first)}, then p50 {ms(statistics.median(times))}"
        f"  p95 {ms(percentile(times, 95))}"
    )


def post_query(port: int, query: str) -> float:
    """Seconds from posting the query box's callback to its answer (the table of units)."""
    body = json.dumps(
        {
            "output": f"{ids.MEANING_RESULTS}.children",
            "outputs": {"id": ids.MEANING_RESULTS, "property": "children"},
            "inputs": [{"id": ids.MEANING_INPUT, "property": "value", "value": query}],
            "changedPropIds": [f"{ids.MEANING_INPUT}.value"],
            "parsedChangedPropsIds": [f"{ids.MEANING_INPUT}.value"],
        }
    ).encode()
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    started = time.perf_counter()
    conn.request("POST", "/_dash-update-component", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    text = response.read().decode()
    seconds = time.perf_counter() - started
    if response.status != 200 or "nd-meaning-row" not in text:
        raise SystemExit(f"the query {query!r} answered {response.status}: {text[:300]}")
    return seconds


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


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
