"""Helpers for the end-to-end tests in headless Chromium: wait for a condition, never a fixed time."""

from __future__ import annotations

import time
from pathlib import Path

from selenium.webdriver.support.ui import WebDriverWait


def wait_for_path(dash_duo, path: str, timeout: float = 10) -> None:
    """Until the browser shows the app's page at ``path``."""
    WebDriverWait(dash_duo.driver, timeout).until(lambda d: d.current_url == dash_duo.server_url + path)


def wait_for_download(path: Path, timeout: float = 20) -> bytes:
    """A download's bytes. Chromium writes it as ``NAME.crdownload`` and renames it when whole, so
    once ``path`` exists it is complete."""
    deadline = time.monotonic() + timeout
    while not path.is_file():
        assert time.monotonic() < deadline, f"no download {path.name} arrived"
        time.sleep(0.05)
    return path.read_bytes()
