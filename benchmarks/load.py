"""Load: many browsers on the dashboard at once, against `neurodash serve` and Flask's development server.

    python benchmarks/load.py [--store demo.duckdb] [--clients 50] [--seconds 120] [--settle 60]
                              [--servers serve,dev] [--server NAME='COMMAND {store} {port}']

Each server is started in turn on a free port of 127.0.0.1 (loopback only) and loaded by ``--clients``
threads for ``--seconds``. Each client does what a browser does, over and over: it opens the overview
(the page, ``_dash-layout``, ``_dash-dependencies``, the pages callback that returns the overview's
layout, and the units table's data, fetched in full gzip-compressed the first time and then with
``If-None-Match``, as a browser's cache does: a 304), then a random unit's page (the page, layout,
dependencies, the pages callback that builds the unit page, and the sets-name callback the page fires
next). Static files are left out: a browser caches them after its first visit.

Prints, per server: requests per second, p50/p95/p99 per kind of request, errors (any status but 200,
or 304 for the units table, or a failed connection), and the server's memory (RSS of its process
tree) at start, at its peak and ``--settle`` seconds after the load stops. Targets on a 2-core machine: no errors, the unit page's
callback under 1 s at p95, memory back within 20% of its start.

The store: ``--store``, else the demo store (``$NEURODASH_HOME/demo.duckdb``) if built, else a
synthetic store of the demo's shape (30 layers x 1536 neurons and 1536 SAE features on layer 15, 45
examples each), built once into a temporary folder.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the package, and the tests' synthetic store and requests

from app_screenshot import free_port  # noqa: E402
from dash_http import pages_callback  # noqa: E402

from neurodash import paths  # noqa: E402
from neurodash.app import routes  # noqa: E402
from neurodash.storage import Store  # noqa: E402

HOST = "127.0.0.1"
TIMEOUT_S = 60
DEV_SERVER = (
    "from neurodash.app import create_app, freeze_startup_heap; import sys; "
    "app = create_app(sys.argv[1]); freeze_startup_heap(); "
    "app.run(host='127.0.0.1', port=int(sys.argv[2]))"
)
SERVERS = {
    "serve": f"{shlex.quote(sys.executable)} -m neurodash.cli serve {{store}} --port {{port}}",
    "dev": f"{shlex.quote(sys.executable)} -c {shlex.quote(DEV_SERVER)} {{store}} {{port}}",
}


SET_NAMES_CALLBACK = json.dumps(
    {
        "output": "set-names.children",
        "outputs": {"id": "set-names", "property": "children"},
        "inputs": [{"id": "set-names", "property": "id", "value": "set-names"}],
        "changedPropIds": [],
        "parsedChangedPropsIds": [],
    }
).encode()


def browser_visits(path: str, is_unit: bool) -> list[tuple[str, str, str, bytes | None]]:
    """(kind, method, path, body) of the requests a browser makes to open ``path``."""
    kind = "unit" if is_unit else "overview"
    visit = [
        (f"{kind} page", "GET", path, None),
        ("_dash-layout", "GET", "/_dash-layout", None),
        ("_dash-dependencies", "GET", "/_dash-dependencies", None),
        (f"{kind} callback", "POST", "/_dash-update-component", pages_callback(path)),
    ]
    if is_unit:
        return [*visit, ("set-names callback", "POST", "/_dash-update-component", SET_NAMES_CALLBACK)]
    return [*visit, (UNITS_TABLE, "GET", routes.UNITS_TABLE_DATA, None)]


UNITS_TABLE = "units table"


class BrowserCache:
    """The ETag of the units table, once fetched: later visits ask with ``If-None-Match``. The table is
    fetched only where the overview's layout names its address, as a browser does (a server from
    before the table had an address of its own sent it inside the layout)."""

    def __init__(self) -> None:
        self.etag: str | None = None
        self.table_named = True

    def skips(self, kind: str) -> bool:
        return kind == UNITS_TABLE and not self.table_named

    def read(self, kind: str, body: bytes) -> None:
        if kind == "overview callback":  # Dash writes "/" in JSON strings as \u002f
            self.table_named = routes.UNITS_TABLE_DATA in body.decode().replace("\\u002f", "/")

    def headers(self, kind: str, body: bytes | None) -> dict[str, str]:
        headers = {"Content-Type": "application/json"} if body else {}
        if kind == UNITS_TABLE:
            headers["Accept-Encoding"] = "gzip"
            if self.etag:
                headers["If-None-Match"] = self.etag
        return headers

    def error(self, kind: str, response: http.client.HTTPResponse) -> str | None:
        """What went wrong with ``response``, or None (a 304 for the cached table is right)."""
        if kind == UNITS_TABLE and response.status in (200, 304):
            self.etag = response.getheader("ETag") or self.etag
            return None
        return None if response.status == 200 else f"status {response.status}"


@dataclass
class Results:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, seconds: float, error: str | None) -> None:
        with self.lock:
            if error:
                self.errors[f"{kind}: {error}"] += 1
            else:
                self.latencies[kind].append(seconds)


def client(port: int, units: list[str], deadline: float, seed: int, results: Results) -> None:
    """One browser: the overview, then a random unit's page, until ``deadline``."""
    rng = random.Random(seed)
    cache = BrowserCache()
    conn = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT_S)
    while time.monotonic() < deadline:
        unit_path = f"/unit/{rng.choice(units)}"
        for kind, method, path, body in browser_visits("/", False) + browser_visits(unit_path, True):
            if time.monotonic() >= deadline:
                break
            if cache.skips(kind):
                continue
            started = time.perf_counter()
            error = None
            try:
                conn.request(method, path, body=body, headers=cache.headers(kind, body))
                response = conn.getresponse()
                cache.read(kind, response.read())
                error = cache.error(kind, response)
            except (OSError, http.client.HTTPException) as e:
                error = type(e).__name__
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT_S)
            results.add(kind, time.perf_counter() - started, error)
    conn.close()


def tree_rss(process: psutil.Process) -> int:
    """Resident memory of ``process`` and its children, in bytes."""
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


class MemoryWatch:
    """The peak RSS of a process tree, sampled every 0.2 s in a thread."""

    def __init__(self, process: psutil.Process) -> None:
        self.process, self.peak = process, tree_rss(process)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, tree_rss(self.process))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def wait_until_up(port: int, server: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode} before answering")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=5)
            conn.request("GET", "/_dash-layout")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"the server did not answer on port {port} within {timeout:.0f} s")


def warm_up(port: int, units: list[str]) -> None:
    """One browser's visit, so that first-request set-up is not counted as load."""
    client(port, units[:1], time.monotonic() + 30, 0, Results())


@contextmanager
def served(
    store: Path, command: str = SERVERS["serve"], log: IO[bytes] | int = subprocess.DEVNULL
) -> Iterator[tuple[int, subprocess.Popen]]:
    """``command`` serving ``store`` on a free port, its output to ``log``: yields the port, once the
    server answers, and the process; stops it (killed after 10 s) on leaving."""
    port = free_port()
    argv = shlex.split(command.format(store=shlex.quote(str(store)), port=port))
    server = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_up(port, server)
        yield port, server
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()


def run_server(name: str, command: str, store: Path, units: list[str], args: argparse.Namespace) -> dict:
    log = tempfile.TemporaryFile()
    with served(store, command, log) as (port, server):
        process = psutil.Process(server.pid)
        time.sleep(1)
        start_rss = tree_rss(process)
        warm_up(port, units)
        warm_rss = tree_rss(process)
        watch = MemoryWatch(process)
        results = Results()
        started = time.monotonic()
        deadline = started + args.seconds
        clients = [
            threading.Thread(target=client, args=(port, units, deadline, i + 1, results))
            for i in range(args.clients)
        ]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        elapsed = time.monotonic() - started
        peak = watch.stop()
        print(f"  load done; waiting {args.settle:.0f} s for memory to settle", file=sys.stderr)
        time.sleep(args.settle)
        settled = tree_rss(process)
    log.seek(0)
    tail = log.read().decode(errors="replace")[-2000:]
    return {
        "name": name,
        "results": results,
        "elapsed": elapsed,
        "rss": (start_rss, peak, settled),
        "warm_rss": warm_rss,
        "traceback": "Traceback" in tail,
    }


def report(run: dict) -> None:
    results: Results = run["results"]
    n_ok = sum(len(v) for v in results.latencies.values())
    n_errors = sum(results.errors.values())
    mb = [r / 2**20 for r in run["rss"]]
    print(f"\n== {run['name']}: {(n_ok + n_errors) / run['elapsed']:.1f} requests/s, {n_errors} errors")
    print(f"  {'request':<22}{'n':>7}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}")
    for kind, seconds in results.latencies.items():
        p50, p95, p99 = np.percentile(np.array(seconds) * 1000, [50, 95, 99])
        print(f"  {kind:<22}{len(seconds):>7}{p50:>10.0f}{p95:>10.0f}{p99:>10.0f}")
    for error, n in sorted(results.errors.items()):
        print(f"  error {error}: {n}")
    warm = run["warm_rss"] / 2**20
    change = (mb[2] - mb[0]) / mb[0] * 100
    print(
        f"  memory: {mb[0]:.0f} MB at start ({warm:.0f} MB after one browser's visit), {mb[1]:.0f} MB peak, "
        f"{mb[2]:.0f} MB after the settle ({change:+.0f}% of start, {(mb[2] - warm) / warm * 100:+.0f}% of "
        "after one visit)" + ("; a traceback in its log" if run["traceback"] else "")
    )


def check_targets(run: dict) -> list[str]:
    results: Results = run["results"]
    missed = []
    if results.errors:
        missed.append(f"{run['name']}: {sum(results.errors.values())} errors")
    p95 = float(np.percentile(results.latencies.get("unit callback", [np.inf]), 95))
    if p95 >= 1:
        missed.append(f"{run['name']}: unit callback p95 {p95 * 1000:.0f} ms >= 1 s")
    start, _, settled = run["rss"]
    if settled > 1.2 * start:
        missed.append(f"{run['name']}: memory {settled / start - 1:+.0%} of start after the settle")
    return missed


def pick_store(store: Path | None) -> Path:
    if store is not None:
        return store
    if paths.demo_store_path().is_file():
        return paths.demo_store_path()
    from synthetic import make_synthetic_store

    path = Path(tempfile.gettempdir()) / "neurodash-load" / "synthetic-30x1536.duckdb"
    if not path.is_file():
        path.parent.mkdir(exist_ok=True)
        print(f"building a synthetic store of the demo's shape at {path}", file=sys.stderr)
        make_synthetic_store(path, n_layers=30, n_units=1536, sae_layers=(15,))
    return path


def unit_paths(store: Path, n: int, seed: int = 0) -> list[str]:
    """``n`` random ``source/index`` of the store, from every source."""
    rng = random.Random(seed)
    with Store(store) as s:
        sources = s.sources()
    return [
        f"{src.source_id}/{rng.randrange(src.n_units)}" for src in (rng.choice(sources) for _ in range(n))
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", type=Path)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--settle", type=float, default=60, help="seconds after the load to measure memory")
    parser.add_argument("--servers", default="serve,dev", help="of: " + ", ".join(SERVERS))
    parser.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="NAME=COMMAND",
        help="another server to compare, a command with {store} and {port} (binding 127.0.0.1)",
    )
    args = parser.parse_args()
    store = pick_store(args.store)
    units = unit_paths(store, 1000)
    commands = {name: SERVERS[name] for name in args.servers.split(",") if name}
    commands.update(spec.split("=", 1) for spec in args.server)
    print(
        f"{args.clients} clients for {args.seconds:.0f} s against {store} "
        f"({os.cpu_count()} CPUs), memory {args.settle:.0f} s after",
        flush=True,
    )
    missed = []
    for name, command in commands.items():
        print(f"{name}: {command}", file=sys.stderr)
        run = run_server(name, command, store, units, args)
        report(run)
        missed += check_targets(run)
        sys.stdout.flush()
    print("\ntargets: " + ("all met" if not missed else "missed: " + "; ".join(missed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
