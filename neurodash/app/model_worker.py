"""Background jobs that run the model share one warm worker (``precompute.live.worker``): the model is
loaded once per server, not once per job.

Dash's DiskcacheManager forks a new process for every background job. ``JobsManager`` (the app's
manager) starts the worker lazily, at the first job, with ``subprocess`` (a fresh interpreter that
imports torch, never the server), and makes it ``current`` in the job it forks. A job calls
``call("precompute.live.lab_run:run_lab", ...)``: the worker forks a child that has the model in memory
and runs the function there, progress and result coming back over a Unix socket. Cancel still kills
the job; the child sees its connection close and exits. Where no worker is up (a job function called
directly, in a test or a notebook), ``call`` runs the function in this process.
"""

from __future__ import annotations

import atexit
import importlib
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Client, Connection
from pathlib import Path
from typing import Any

import dash

KEY_ENV = "NEURODASH_WORKER_KEY"  # as precompute.live.worker reads it
IDLE_S = 1800.0  # the worker exits after this long without a job (the next job starts a new one)
CONNECT_S = 120.0  # how long a job waits for a worker that is starting (importing torch, loading)
_FORK_LOCK = threading.Lock()
current: ModelWorker | None = None  # the worker of the app whose job this process is
_started: list[ModelWorker] = []  # every worker this process started (``stop_all``)


class ModelWorker:
    """The worker process for one model: started on demand, restarted if it has exited."""

    def __init__(self, model: str, device: str = "cpu", idle_s: float = IDLE_S) -> None:
        self.model, self.device, self.idle_s = model, device, idle_s
        self.address = ""  # a socket in a private folder, made at the first start
        self.authkey = secrets.token_bytes(32)
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._owner = os.getpid()

    def ensure_started(self) -> None:
        """Start the worker unless it runs (its socket appears once it listens)."""
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                return
            if not self.address:
                folder = tempfile.mkdtemp(prefix="neurodash-worker-")  # 0700: only this user
                self.address = str(Path(folder) / "socket")
            if self not in _started:
                atexit.register(self.stop)
                _started.append(self)
            Path(self.address).unlink(missing_ok=True)
            root = str(Path(__file__).resolve().parents[2])  # where neurodash and precompute are
            path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
            env = {**os.environ, KEY_ENV: self.authkey.hex(), "PYTHONPATH": path}
            args = [self.address, self.model, self.device, str(os.getpid()), str(self.idle_s)]
            self._process = subprocess.Popen(
                [sys.executable, "-m", "precompute.live.worker", *args],
                env=env,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # not a child the job's cancel kills, nor the terminal's ^C
            )

    def connect(self, timeout: float = CONNECT_S) -> Connection | None:
        """A connection to the worker, waiting while it starts; None if it is not running."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._alive():
                return None
            try:
                conn = Client(self.address, family="AF_UNIX", authkey=self.authkey)
            except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError, EOFError):
                time.sleep(0.1)  # not listening yet, or exiting (idle) as we came: then None
                continue
            assert isinstance(conn, Connection)  # a Unix socket: never Windows' PipeConnection
            return conn
        return None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def _alive(self) -> bool:
        """Whether the worker runs: by its pid, since a job (forked from the server) cannot wait on it."""
        import psutil

        if self._process is None:
            return False
        try:
            return psutil.Process(self._process.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def stop(self) -> None:
        """End the worker (the server that started it only) and remove its socket."""
        if os.getpid() != self._owner or not self.address:
            return
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
        Path(self.address).unlink(missing_ok=True)
        try:
            Path(self.address).parent.rmdir()
        except OSError:
            pass
        self.address = ""  # a later start makes a new folder


def stop_all() -> None:
    """End every worker this process started (a test suite's apps, done with; a job restarts one)."""
    for worker in _started:
        worker.stop()


class JobsManager(dash.DiskcacheManager):
    """The app's background-callback manager: Dash's, plus the model worker made ``current`` in each
    job it forks (and started, lazily, at the first)."""

    def __init__(self, cache, worker: ModelWorker) -> None:
        super().__init__(cache)
        self.worker = worker

    def call_job_fn(self, key, job_fn, args, context):
        global current
        self.worker.ensure_started()
        with _FORK_LOCK:  # several apps in one process: each job gets its own app's worker
            current = self.worker
            try:
                return super().call_job_fn(key, job_fn, args, context)
            finally:
                current = None


def call(function: str, *args: Any, progress: Callable[..., None] | None = None, **kwargs: Any) -> Any:
    """``function`` ("module:name") called with ``args``, ``kwargs`` and ``progress`` (when given): in
    a child of the warm worker when this process is a job with one, else here."""
    conn = current.connect() if current is not None else None
    if conn is None:
        return _call_here(function, args, kwargs, progress)
    with conn:
        conn.send((function, args, kwargs, progress is not None))
        while True:
            try:
                kind, value = conn.recv()
            except EOFError:
                raise RuntimeError(f"the model worker's job {function} ended without a result") from None
            if kind == "progress" and progress is not None:
                progress(*value)
            elif kind == "result":
                return value
            elif kind == "error":
                raise value if isinstance(value, BaseException) else RuntimeError(str(value))


def _call_here(function: str, args: tuple, kwargs: dict, progress: Callable[..., None] | None) -> Any:
    """The function in this process; on one torch thread where torch was loaded before (a process
    forked from one that had used torch's thread pool would hang in it)."""
    if "torch" in sys.modules:
        from precompute.live.cache import avoid_inherited_thread_pool

        avoid_inherited_thread_pool()
    module, _, name = function.partition(":")
    extra = {"progress": progress} if progress is not None else {}
    return getattr(importlib.import_module(module), name)(*args, **kwargs, **extra)
