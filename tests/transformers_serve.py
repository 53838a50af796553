"""``transformers serve`` (an OpenAI-compatible endpoint, the ``transformers[serving]`` extra) on a free
local port, offline, pinned to one local model folder: the LLM explainer's test meets a real server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

STARTUP_S = 180.0  # loading torch and the model on a loaded 2-core machine


@dataclass(frozen=True)
class Served:
    url: str  # http://127.0.0.1:PORT/v1
    model: str  # the name requests must carry: a pinned server takes only its own folder's path
    log: Path  # uvicorn's access log: one line per request

    def chat_requests(self) -> int:
        return self.log.read_text().count('"POST /v1/chat/completions HTTP/1.1" 200')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _transformers_cli() -> str:
    beside = Path(sys.executable).parent / "transformers"
    found = str(beside) if beside.exists() else shutil.which("transformers")
    assert found, "the `transformers` CLI is not installed (pip install 'transformers[serving]')"
    return found


@contextmanager
def transformers_serving(model_dir: Path, log_dir: Path) -> Iterator[Served]:
    """The server, up and answering ``/health``; stopped (and its generations with it) on exit."""
    port, log = _free_port(), log_dir / "transformers-serve.log"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }  # many threads: slower on a shared CPU
    command = [_transformers_cli(), "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port)]
    command += ["--device", "cpu", "--log-level", "info"]
    with log.open("w") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_until_healthy(proc, f"http://127.0.0.1:{port}/health", log)
        yield Served(f"http://127.0.0.1:{port}/v1", str(model_dir), log)
    finally:
        proc.kill()  # a graceful stop would wait for a generation whose client is gone
        proc.wait(timeout=30)


def _wait_until_healthy(proc: subprocess.Popen, health: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"transformers serve exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(health, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"transformers serve not healthy in {STARTUP_S:g} s:\n{log.read_text()[-3000:]}")
