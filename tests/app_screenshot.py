"""Screenshot a page of the dashboard in headless Chromium (the README's ``assets/unit_page.png``).

    python tests/app_screenshot.py STORE [--unit L15N3 | --page /] [--out assets/unit_page.png]
    python tests/app_screenshot.py STORE --unit L15N631 --panel maximize --out assets/maximize_panel.png
    python tests/app_screenshot.py STORE --page "/sets?name=comparison words" --out assets/sets_page.png
    python tests/app_screenshot.py STORE --page "/?q= the" --panel search --out assets/search.png
    python tests/app_screenshot.py STORE --page "/?q=closing brackets" --panel meaning --out assets/search_meaning.png
    python tests/app_screenshot.py STORE --unit L0N5 --own-text "import os" --panel own_text --out assets/own_text.png
    python tests/app_screenshot.py STORE --unit L15N1361 --own-text "6 of 16" --until own_text --out assets/unit_page.png
    python tests/app_screenshot.py STORE --page /heads --out assets/heads_page.png
    python tests/app_screenshot.py STORE --unit L17H4 --height 2300 --out assets/head_page.png
    python tests/app_screenshot.py STORE --unit L15N1361 --panel explanation --out assets/explanation.png

Without ``--unit``, takes the unit with the highest skew in the store's middle source (sparse
units make the clearest pictures). ``--panel`` saves only one panel of the page, cropped to it;
``--until`` the page from its top down to the end of that panel (the window made as tall).
The maximization panel shows the unit's latest run in ``STORE.maximize.duckdb`` and the sets page
the sets in ``STORE.sets.duckdb``: make them first (``neurodash maximize``, ``ExampleSets``).
``chrome_options()`` is also what the browser tests use.
"""

from __future__ import annotations

import argparse
import base64
import logging
import socket
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
CHROME_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-features=Translate,MediaRouter,OptimizationHints",
    "--hide-scrollbars",
    "--window-size=1400,1000",
    "--force-device-scale-factor=1",
)
# what each page shows once drawn (CSS), by URL path; a unit page is "unit", a head's page "head"
READY = {
    "unit": "#unit-logits .ytick",
    "head": "#head-logits .ytick",
    "/": "#layer-plots .box",
    "/sets": ".nd-main .nd-panel",
    "/heads": "#heads-heatmap .heatmaplayer",
    "/lab": "#lab-attn-body .ytick",
}
# --panel NAME: the panel saved, and what it shows once drawn
PANELS = {
    "maximize": ("section.nd-panel:has(#maximize-result)", "#maximize-figure .ytick"),
    "search": ("section.nd-panel:has(#search-results)", "#search-results .nd-search-row"),
    "meaning": ("section.nd-panel:has(#meaning-results)", "#meaning-results .nd-meaning-row"),
    "own_text": ("section.nd-panel:has(#own-text-result)", "#own-text-input"),
    "explanation": ("#nd-explanation", "#nd-explanation .nd-stats"),
}


def chrome_options():
    """Headless Chromium as root on a machine without network or GPU."""
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    if Path("/usr/bin/chromium").is_file():
        options.binary_location = "/usr/bin/chromium"
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    return options


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def screenshot(
    store_path: Path,
    path: str,
    out: Path,
    height: int = 1700,
    ready: str = ".nd-main > *",
    crop: str | None = None,
    own_text: str | None = None,
    until: str | None = None,
) -> Path:
    """Serve the store on a free local port, open ``path``, wait for ``ready`` (CSS) and save a PNG:
    the window, or only the element ``crop`` (CSS), or the page down to the end of ``until`` (CSS)."""
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait
    from werkzeug.serving import make_server

    from neurodash.app import create_app

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = make_server("127.0.0.1", free_port(), create_app(store_path).server, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    driver = webdriver.Chrome(options=chrome_options())
    try:
        driver.set_window_size(1400, height)
        driver.get(f"http://127.0.0.1:{server.server_port}{path}")
        WebDriverWait(driver, 120).until(ec.presence_of_element_located((By.CSS_SELECTOR, ready)))
        if own_text:  # type it into the unit page's box and run the model on it
            driver.find_element(By.CSS_SELECTOR, "#own-text-input").send_keys(own_text)
            driver.find_element(By.CSS_SELECTOR, "#own-text-run").click()
            WebDriverWait(driver, 180).until(
                ec.presence_of_element_located((By.CSS_SELECTOR, "#own-text-result .nd-tokens > span"))
            )
        if until:  # the window as tall as the page down to the end of that element
            bottom = driver.execute_script(
                "const r = document.querySelector(arguments[0]).getBoundingClientRect();"
                "return Math.ceil(r.bottom + window.scrollY) + 16;",
                until,
            )
            driver.set_window_size(
                1400, bottom + driver.execute_script("return window.outerHeight - innerHeight")
            )
        marked = driver.find_elements(By.CSS_SELECTOR, ".nd-example .nd-tok-max")
        if marked and not crop:  # show the token inspector at work
            webdriver.ActionChains(driver).move_to_element(marked[0]).perform()
            driver.execute_script("window.scrollTo(0, 0)")  # the inspector keeps the hovered token
        WebDriverWait(driver, 30).until(  # every figure on the page has drawn its axes
            lambda d: all(
                g.find_elements(By.CSS_SELECTOR, ".main-svg")
                for g in d.find_elements(By.CSS_SELECTOR, ".dash-graph")
            )
        )
        driver.execute_async_script(  # two frames on: what the figures drew has been painted
            "requestAnimationFrame(() => requestAnimationFrame(arguments[arguments.length - 1]))"
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        if crop:
            out.write_bytes(element_png(driver, crop))
        else:
            driver.save_screenshot(str(out))
    finally:
        driver.quit()
        server.shutdown()
    return out


def element_png(driver, css: str) -> bytes:
    """The element ``css`` as a PNG, whole however tall, as it lies on the page scrolled to the top
    (where the sticky top bar and token inspector do not cover it)."""
    driver.execute_script("window.scrollTo(0, 0)")
    x, y, width, height = driver.execute_script(
        "const r = document.querySelector(arguments[0]).getBoundingClientRect();"
        "return [r.x, r.y + window.scrollY, r.width, r.height];",
        css,
    )
    clip = {"x": x, "y": y, "width": width, "height": height, "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "clip": clip, "captureBeyondViewport": True}
    )
    return base64.b64decode(shot["data"])


def unit_path(store_path: Path, unit: str | None) -> str:
    """The page of ``unit`` (``L15N3``, ``L15.mlp/3``), by default a sparse unit of the middle layer."""
    from neurodash.app import routes
    from neurodash.storage import Store
    from neurodash.units import parse_ref

    with Store(store_path) as store:
        sources = store.sources()
        if unit is None:
            middle = sources[len(sources) // 2].source_id
            units = store.units_frame(middle)
            unit = f"{middle}/{int(units.loc[units['skew'].idxmax(), 'unit'])}"
        return routes.unit_href(parse_ref(unit, sources))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", type=Path)
    parser.add_argument("--unit", help="e.g. L15N3 or L15.mlp/3 (default: a sparse unit of the middle layer)")
    parser.add_argument("--page", help="another page instead, e.g. / or /probe or '/sets?name=my set'")
    parser.add_argument("--panel", choices=sorted(PANELS), help="save only this panel of the unit page")
    parser.add_argument("--own-text", help="type this into the unit page's own-text box and run it")
    parser.add_argument("--until", choices=sorted(PANELS), help="save the page down to the end of this panel")
    parser.add_argument("--out", type=Path, default=ROOT / "assets" / "unit_page.png")
    parser.add_argument("--height", type=int, default=1700, help="window height in pixels")
    args = parser.parse_args()
    path = args.page or unit_path(args.store, args.unit)
    page = urlsplit(args.page).path if args.page else "head" if path.startswith("/head/") else "unit"
    ready = READY.get(page, ".nd-main > *")
    crop = None
    if args.panel:
        crop, ready = PANELS[args.panel]
    until = PANELS[args.until][0] if args.until else None
    out = screenshot(args.store, path, args.out, args.height, ready, crop, args.own_text, until)
    print(f"wrote {out} ({path})")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
