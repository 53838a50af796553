"""The model worker: one long-lived process that loads the store's model once and forks a child, with
the model already in memory, for each job (the dashboard's probe, activation maximization, own text
and circuit lab). Dash's DiskcacheManager runs every background job in a new process, so a cache per
job process (``precompute.live.cache``) died with each job and every job loaded the model again.

    python -m precompute.live.worker ADDRESS MODEL DEVICE PARENT_PID IDLE_S   (authkey: $NEURODASH_WORKER_KEY)

The protocol, over a ``multiprocessing.connection`` on a Unix socket: the job connects and sends
``(function "module:name", args, kwargs, wants_progress)``; the child calls it, with ``progress=`` a
function that sends ``("progress", args)`` when asked, and sends ``("result", value)`` or
``("error", exception or text)``. A job that is cancelled (killed) closes its end: the child sees the
end of its connection and exits at once. The worker exits when its parent (the server) is gone or
after ``IDLE_S`` seconds without a job. The client is ``neurodash.app.model_worker``.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection, Listener
from typing import Any

KEY_ENV = "NEURODASH_WORKER_KEY"
PROGRESS, RESULT, ERROR = "progress", "result", "error"


def serve(address: str, model: str, device: str, parent_pid: int, idle_s: float, authkey: bytes) -> None:
    """Listen on ``address``, load ``model`` (one torch thread: see ``avoid_inherited_thread_pool``),
    then fork a child per connection until the parent is gone or ``idle_s`` pass without a job."""
    listener = Listener(address, family="AF_UNIX", authkey=authkey)
    last_job = [float("inf")]  # not idle while loading
    threading.Thread(target=_watch, args=(parent_pid, idle_s, last_job, address), daemon=True).start()
    from precompute.live.cache import avoid_inherited_thread_pool, cached_model

    avoid_inherited_thread_pool()  # the children inherit torch: one thread there, and so here
    if model:
        try:
            cached_model(model, device)
        except Exception:  # a child loading it again reports the error to its job
            traceback.print_exc()
    last_job[0] = time.monotonic()  # idle from now: loading is not idling
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    while True:
        try:
            conn = listener.accept()
        except (OSError, EOFError, AuthenticationError):  # a job gone (cancelled) before, or a stranger
            continue
        last_job[0] = time.monotonic()
        assert isinstance(conn, Connection)  # a Unix socket: never Windows' PipeConnection
        if os.fork() == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            listener.close()
            _child(conn)  # never returns
        conn.close()


def _watch(parent_pid: int, idle_s: float, last_job: list[float], address: str) -> None:
    """Exit the worker when the server is gone or nothing was asked for ``idle_s`` seconds."""
    while os.getppid() == parent_pid and time.monotonic() - last_job[0] < idle_s:
        time.sleep(0.5)
    try:
        os.unlink(address)
    finally:
        os._exit(0)


def _child(conn: Connection) -> None:
    """Run one job on the worker's warm caches and exit (the job's end closing ends it too)."""
    code = 0
    try:
        name, args, kwargs, wants_progress = conn.recv()
        threading.Thread(target=_exit_when_closed, args=(conn,), daemon=True).start()
        if wants_progress:
            kwargs = {**kwargs, "progress": lambda *a: conn.send((PROGRESS, a))}
        try:
            reply = (RESULT, _function(name)(*args, **kwargs))
        except Exception as e:  # sent back whole where it pickles (NeurodashError does)
            reply = (ERROR, e if _picklable(e) else f"{type(e).__name__}: {e}")
        conn.send(reply)
    except (EOFError, OSError):  # the job is gone (cancelled)
        code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _exit_when_closed(conn: Connection) -> None:
    """The job sends nothing after its request: anything readable is the end of its connection."""
    try:
        conn.poll(None)
    except OSError:
        pass
    os._exit(1)


def count(n: int, progress: Callable[[int, int], None]) -> int:
    """Report progress 1..``n`` of ``n`` and return ``n``: the worker's own check (tests)."""
    for done in range(1, n + 1):
        progress(done, n)
    return n


def _function(name: str) -> Any:
    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr)


def _picklable(value: object) -> bool:
    import pickle

    try:
        pickle.loads(pickle.dumps(value))
    except Exception:
        return False
    return True


if __name__ == "__main__":
    address, model, device, parent, idle = sys.argv[1:6]
    serve(address, model, device, int(parent), float(idle), bytes.fromhex(os.environ.pop(KEY_ENV)))
