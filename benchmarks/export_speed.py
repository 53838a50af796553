"""Export speed and memory: every example of a store to each format, one fresh process per export.

    NEURODASH_HOME=/tmp/ndhome python benchmarks/export_speed.py [--store STORE] [--formats csv,jsonl,parquet,html]

For csv, jsonl and parquet: one layer, then every example of the store, printing rows, seconds,
rows per second, output size and the process's peak resident memory; the peak barely moves from
one layer to all of them, because rows stream chunk by chunk. An HTML report is for reading
(at most ``HTML_MAX_EXAMPLES`` examples), so html exports the top examples of as many units of
the middle layer as fit. Outputs go to a temporary folder, deleted as it goes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from neurodash.export import Selection, export, resolve
from neurodash.storage import Store
with Store({store!r}) as store:
    started = time.perf_counter()
    selection = Selection(**{selection!r})
    rows = resolve(store, selection).n_examples
    out = export(store, selection, {fmt!r}, {out!r})
    seconds = time.perf_counter() - started
print(json.dumps({{"rows": rows, "seconds": seconds, "bytes": out.stat().st_size,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def run_export(store: Path, selection: dict, fmt: str, out: Path) -> dict:
    """One export in a fresh process; its rows, seconds, output bytes and peak memory."""
    code = CHILD.format(root=str(ROOT), store=str(store), selection=selection, fmt=fmt, out=str(out))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"export to {fmt} failed:\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    out.unlink()
    return result


def html_selection(store_path: Path) -> dict:
    """Top examples of the middle layer's first units, as many as an HTML report may hold."""
    from neurodash.export import HTML_MAX_EXAMPLES, Selection, resolve
    from neurodash.storage import Store

    with Store(store_path) as store:
        source = store.sources()[len(store.sources()) // 2]
        per_unit = resolve(store, Selection(units=[f"{source.source_id}/0"], buckets=["top"])).n_examples
        units = [
            f"{source.source_id}/{u}"
            for u in range(min(source.n_units, HTML_MAX_EXAMPLES // max(per_unit, 1)))
        ]
    return {"units": units, "buckets": ["top"]}


def main() -> None:
    from neurodash import paths
    from neurodash.storage import Store

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=paths.demo_store_path())
    parser.add_argument("--formats", default="csv,jsonl,parquet,html")
    args = parser.parse_args()
    with Store(args.store) as store:
        first_layer = store.sources()[0].layer
        print(f"{args.store}: {store.meta.get('model')}, {len(store.sources())} sources")
    print(
        f"{'format':8s} {'selection':18s} {'rows':>10s} {'seconds':>8s} {'rows/s':>9s} {'size MB':>8s} {'peak MB':>8s}"
    )
    with tempfile.TemporaryDirectory(prefix="neurodash-bench-") as folder:
        for fmt in args.formats.split(","):
            if fmt == "html":
                runs = [("top, <= limit", html_selection(args.store))]
            else:
                runs = [(f"layer {first_layer}", {"layers": [first_layer]}), ("every example", {})]
            for label, selection in runs:
                r = run_export(args.store, selection, fmt, Path(folder) / f"bench.{fmt}")
                print(
                    f"{fmt:8s} {label:18s} {r['rows']:10,d} {r['seconds']:8.1f} {r['rows'] / r['seconds']:9,.0f} "
                    f"{r['bytes'] / 1e6:8.1f} {r['peak_mb']:8.0f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
