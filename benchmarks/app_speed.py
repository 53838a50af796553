"""Dashboard speed: server-side time to build the unit page and the overview.

    python benchmarks/app_speed.py [--store demo.duckdb] [--synthetic PATH] [--repeats 300] [--browser]

For the demo store (default ``$NEURODASH_HOME/demo.duckdb`` if it exists) and a synthetic store
of 100k units with 45 examples each (built once into a temporary folder, or read from / written
to ``--synthetic``), prints:

- start-up: ``create_app`` (opens the store, loads the units frame once), then
  ``freeze_startup_heap`` as ``neurodash serve`` does;
- the unit page: its layout built for random units (``build``) and also serialised to the JSON
  the browser receives (``+json``), p50 and p95; target p95 <= 50 ms;
- the overview's time to first render on the server: layout and units-table payload (``build``)
  and serialised (``+json``), cold (right after start-up) and warm; target < 1 s;
- the search by token: the index loaded once, then typed text to the results' JSON (exact and
  substring), p50 and p95; target < 300 ms;
- with ``--browser``, in headless Chromium: the overview from navigation to the first grid rows,
  and the unit page from a click on "next unit" to the new page drawn, p50 and p95.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [
    str(ROOT),
    str(ROOT / "tests"),
]  # the package, and the tests' helpers (synthetic, app_screenshot)

from dash._utils import to_json  # noqa: E402

from neurodash import paths  # noqa: E402
from neurodash.app import create_app, freeze_startup_heap  # noqa: E402
from neurodash.app.pages import overview, unit  # noqa: E402


def timed(fn) -> tuple[float, object]:
    started = time.perf_counter()
    out = fn()
    return (time.perf_counter() - started) * 1000, out


def unit_page_ms(app, n: int, seed: int = 0) -> tuple[list[float], list[float]]:
    """(build, build + json) milliseconds for ``n`` random units' pages."""
    store = app.server.extensions["neurodash"].store
    rng = random.Random(seed)
    sources = store.sources()
    build, total = [], []
    for _ in range(n):
        s = rng.choice(sources)
        index = str(rng.randrange(s.n_units))
        with app.server.test_request_context(f"/unit/{s.source_id}/{index}"):
            ms, page = timed(lambda s=s, index=index: unit.layout(source_id=s.source_id, index=index))
            json_ms, _ = timed(lambda page=page: to_json(page))
        build.append(ms)
        total.append(ms + json_ms)
    return build, total


def search_ms(app, n: int = 30, seed: int = 0) -> dict[str, float]:
    """The search by token, server side, from the typed text to the results' JSON: loading the index of
    top examples' max tokens once (``serve`` does it in the background at start-up), then searches
    for tokens that top examples peak on (exact) and for parts of them (substring), p50 and p95."""
    from neurodash.app.panels import search

    store = app.server.extensions["neurodash"].store
    load, index = timed(lambda: store.peak_index)
    rng = random.Random(seed)
    tokens = [store.vocab[int(t)] for t in rng.sample(list(index.token_id), min(n, len(index.token_id)))]
    times = {"exact": [], "substring": []}
    for token in tokens:
        for mode, typed in (("exact", token), ("substring", token.strip()[:3] or token)):
            with app.server.test_request_context("/"):
                ms, shown = timed(lambda typed=typed, mode=mode: search.on_search(typed, [mode]))
                json_ms, _ = timed(lambda shown=shown: to_json(shown))
            times[mode].append(ms + json_ms)
    return {
        "search_index": load,
        **{f"search_{m}_p50": float(np.percentile(t, 50)) for m, t in times.items()},
        **{f"search_{m}_p95": float(np.percentile(t, 95)) for m, t in times.items()},
    }


def overview_ms(app) -> tuple[float, float]:
    with app.server.test_request_context("/"):
        ms, page = timed(overview.layout)
        json_ms, _ = timed(lambda: to_json(page))
    return ms, ms + json_ms


# In the browser: click "next unit", then wait for the new header with every token row built and
# one frame painted.
NEXT_UNIT_JS = """
const done = arguments[arguments.length - 1];
const before = document.querySelector(".nd-unit-header h1").textContent;
const started = performance.now();
document.getElementById("unit-next").click();
function ready() {
  const header = document.querySelector(".nd-unit-header h1");
  const rows = [...document.querySelectorAll(".nd-tokens")];
  return header && header.textContent !== before && rows.every(r => r.ndRendered === r.getAttribute("data-tokens"));
}
(function poll() {
  if (ready()) requestAnimationFrame(() => setTimeout(() => done(performance.now() - started), 0));
  else requestAnimationFrame(poll);
})();
"""


# Milliseconds from navigation start to the first row of the units grid, watched every frame
# (a WebDriverWait polls every 0.5 s, which would be the error of the measure).
FIRST_GRID_ROW_JS = """
const done = arguments[arguments.length - 1];
(function poll() {
  if (document.querySelector(".ag-row .nd-grid-link")) done(performance.now());
  else requestAnimationFrame(poll);
})();
"""


def browser_ms(store_path: Path, unit_pages: int = 30) -> dict[str, float]:
    """In headless Chromium: the overview from navigation to its first grid rows, and the unit
    page from a click on "next unit" to the new page drawn (p50, p95), after a warm-up."""
    import logging
    import threading

    from app_screenshot import chrome_options, free_port
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    app = create_app(store_path)
    server = make_server("127.0.0.1", free_port(), app.server, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    driver = webdriver.Chrome(options=chrome_options())
    driver.set_script_timeout(60)
    try:
        url = f"http://127.0.0.1:{server.server_port}/"
        driver.get(url)  # warm-up: browser cache of the scripts, as for a returning user
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".ag-row .nd-grid-link"))
        driver.get(url)
        overview = driver.execute_async_script(FIRST_GRID_ROW_JS)
        source = app.server.extensions["neurodash"].store.sources()[0]
        driver.get(f"{url}unit/{source.source_id}/0")
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".nd-unit-header h1"))
        for _ in range(3):  # warm-up
            driver.execute_async_script(NEXT_UNIT_JS)
        pages = [driver.execute_async_script(NEXT_UNIT_JS) for _ in range(unit_pages)]
    finally:
        driver.quit()
        server.shutdown()
    return {
        "overview_browser": overview,
        "unit_browser_p50": float(np.percentile(pages, 50)),
        "unit_browser_p95": float(np.percentile(pages, 95)),
    }


def bench(name: str, path: Path, repeats: int, browser: bool) -> dict:
    startup, app = timed(lambda: create_app(path))
    freeze_startup_heap()  # as ``serve`` does
    cold, cold_json = overview_ms(app)
    warm, warm_json = min(overview_ms(app) for _ in range(3))
    unit_page_ms(app, 20, seed=1)  # warm-up: DuckDB caches, first-call imports
    build, total = unit_page_ms(app, repeats)
    row = {
        "store": name,
        "units": sum(s.n_units for s in app.server.extensions["neurodash"].store.sources()),
        "startup": startup,
        "unit_p50": np.percentile(build, 50),
        "unit_p95": np.percentile(build, 95),
        "unit_json_p50": np.percentile(total, 50),
        "unit_json_p95": np.percentile(total, 95),
        "overview_cold": cold,
        "overview_cold_json": cold_json,
        "overview_warm": warm,
        "overview_warm_json": warm_json,
        **search_ms(app),
    }
    if browser:
        row |= browser_ms(path)
    return row


def synthetic_store(path: Path | None, layers: int, units: int) -> Path:
    from synthetic import make_synthetic_store

    if path is not None and path.is_file():
        return path
    target = path or Path(tempfile.mkdtemp(prefix="neurodash-bench-")) / "synthetic.duckdb"
    print(
        f"building a synthetic store of {layers} x {units:,} units with 45 examples each at {target} ...",
        flush=True,
    )
    ms, out = timed(lambda: make_synthetic_store(target, n_layers=layers, n_units=units, n_examples=45))
    print(f"  built in {ms / 1000:.1f} s", flush=True)
    return out


def print_table(rows: list[dict]) -> None:
    print()
    print(
        f"{'store':<28} {'units':>8} {'start-up':>9}   {'unit page p50 / p95 (ms)':^34}   {'overview, first render (ms)':^36}"
    )
    print(
        f"{'':<28} {'':>8} {'(ms)':>9}   {'build':^16} {'+json':^17}   {'cold build / +json':^18} {'warm +json':^10}"
        + ("  browser: overview, unit page p50 / p95" if any("overview_browser" in r for r in rows) else "")
    )
    for r in rows:
        line = (
            f"{r['store']:<28} {r['units']:>8,} {r['startup']:>9.0f}   "
            f"{r['unit_p50']:>6.1f} / {r['unit_p95']:<6.1f} {r['unit_json_p50']:>7.1f} / {r['unit_json_p95']:<6.1f}   "
            f"{r['overview_cold']:>7.0f} / {r['overview_cold_json']:<8.0f} {r['overview_warm_json']:>10.0f}"
        )
        if "overview_browser" in r:
            line += f"  {r['overview_browser']:>7.0f}  {r['unit_browser_p50']:>5.0f} / {r['unit_browser_p95']:<5.0f}"
        print(line)
    print()
    print(f"{'store':<28} {'search by token, typed to results JSON (ms)':<60}")
    for r in rows:
        print(
            f"{r['store']:<28} index load {r['search_index']:>6.0f} (once, in the background at start-up) · "
            f"exact p50 / p95 {r['search_exact_p50']:.1f} / {r['search_exact_p95']:.1f} · "
            f"substring p50 / p95 {r['search_substring_p50']:.1f} / {r['search_substring_p95']:.1f}"
        )
    print("\ntargets: unit page p95 <= 50 ms; overview first render < 1000 ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--store", type=Path, default=paths.demo_store_path(), help="a real store (default: the demo)"
    )
    parser.add_argument(
        "--synthetic", type=Path, help="the synthetic store to reuse or build (default: a temp file)"
    )
    parser.add_argument("--layers", type=int, default=10, help="synthetic layers")
    parser.add_argument("--units", type=int, default=10_000, help="synthetic units per layer")
    parser.add_argument("--repeats", type=int, default=300, help="unit pages built per store")
    parser.add_argument(
        "--browser", action="store_true", help="also time the overview and the unit page in headless Chromium"
    )
    args = parser.parse_args()

    stores = []
    if args.store.is_file():
        stores.append((args.store.name, args.store))
    else:
        print(f"no store at {args.store}: `neurodash demo --no-serve` builds the demo store; skipping it")
    synthetic = synthetic_store(args.synthetic, args.layers, args.units)
    stores.append((f"synthetic {args.layers}x{args.units:,}", synthetic))
    print_table([bench(name, path, args.repeats, args.browser) for name, path in stores])


if __name__ == "__main__":
    main()
