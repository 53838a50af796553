"""Search by token over HTTP: from the typed text posted to ``neurodash serve`` to the results' JSON back.

    python benchmarks/search_latency.py [--store demo.duckdb] [--n 40] [--seed 0] [--wait 0]

Starts ``neurodash serve STORE`` on a free port of 127.0.0.1 and posts the search box's callback as the
browser does once typing pauses (the box waits 0.25 s after the last key, in the browser): first ``6``
as soon as the server answers (while ``serve`` may still be loading the index of peak tokens in the
background) or ``--wait`` seconds later, then ``--n`` tokens that top examples peak on (exact) and their first three characters
(substring). Prints the first search and p50 / p95 / max of the others, and what ``6`` found first.
Target: under 300 ms on the server.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from load import HOST, pick_store, served  # noqa: E402

from neurodash.storage import Store  # noqa: E402


def search_body(typed: str, substring: bool) -> bytes:
    """The body the browser posts when the search box's value changes."""
    return json.dumps(
        {
            "output": "search-results.children",
            "outputs": {"id": "search-results", "property": "children"},
            "inputs": [
                {"id": "search-input", "property": "value", "value": typed},
                {"id": "search-mode", "property": "value", "value": ["substring"] if substring else []},
            ],
            "changedPropIds": ["search-input.value"],
            "parsedChangedPropsIds": ["search-input.value"],
        }
    ).encode()


def search(port: int, typed: str, substring: bool = False) -> tuple[float, str]:
    """(milliseconds, the response's text) of one search."""
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    body = search_body(typed, substring)
    started = time.perf_counter()
    conn.request("POST", "/_dash-update-component", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    text = response.read().decode()
    ms = (time.perf_counter() - started) * 1000
    if response.status != 200:
        raise SystemExit(f"the search for {typed!r} answered {response.status}: {text[:200]}")
    return ms, text


def peak_tokens(store_path: Path, n: int, seed: int) -> list[str]:
    with Store(store_path) as store:
        index = store.peak_index
        ids = random.Random(seed).sample(sorted({int(t) for t in index.token_id}), n)
        return [store.vocab[i] for i in ids]


def first_link(text: str) -> str:
    """The first unit the results link to (a link's ``href``, depth first)."""

    def walk(node: object) -> str | None:
        if isinstance(node, dict):
            if isinstance(node.get("href"), str):
                return node["href"]
            return next((h for v in node.values() if (h := walk(v))), None)
        if isinstance(node, list):
            return next((h for v in node if (h := walk(v))), None)
        return None

    return walk(json.loads(text)) or "none"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path)
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--wait", type=float, default=0.0, help="seconds between start-up and the first search"
    )
    args = parser.parse_args()
    store = pick_store(args.store)
    tokens = peak_tokens(store, args.n, args.seed)
    with served(store) as (port, _):
        time.sleep(args.wait)
        first_ms, found = search(port, "6")
        times: dict[str, list[float]] = {"exact": [], "substring": []}
        for token in tokens:
            times["exact"].append(search(port, token)[0])
            times["substring"].append(search(port, token.strip()[:3] or token, substring=True)[0])
        six_ms, found = search(port, "6")
    print(f"store {store}: {len(tokens)} tokens, served by `neurodash serve`, over loopback HTTP")
    when = (
        f"{args.wait:g} s after the server first answered" if args.wait else "as soon as the server answered"
    )
    print(f"first search ('6', {when}): {first_ms:.0f} ms; again at the end: {six_ms:.0f} ms")
    for mode, t in times.items():
        p50, p95 = np.percentile(t, [50, 95])
        print(f"{mode:<10} p50 {p50:.0f} ms · p95 {p95:.0f} ms · max {max(t):.0f} ms")
    print(f"'6' finds first: {first_link(found)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
