"""The model worker (``neurodash.app.model_worker`` and ``precompute.live.worker``): jobs run in children
of one long-lived process that loaded the model once; errors come back as the job's own exceptions; a
cancelled (killed) job's child exits at once; an idle worker exits; without a worker, jobs run here."""

from __future__ import annotations

import multiprocessing
import time

import psutil
import pytest

from neurodash.app import model_worker
from neurodash.errors import NeurodashError

HOOK = "blocks.1.attn.hook_z"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    from precompute.ground_truth.induction_llama import write_induction_llama

    return str(write_induction_llama(tmp_path_factory.mktemp("worker-model")))


@pytest.fixture(scope="module")
def worker(model_dir):
    worker = model_worker.ModelWorker(model_dir)
    worker.ensure_started()
    yield worker
    worker.stop()


@pytest.fixture
def as_job(worker, monkeypatch):
    """This process as a job of an app whose worker is ``worker`` (what ``JobsManager`` sets up)."""
    monkeypatch.setattr(model_worker, "current", worker)
    return worker


def test_jobs_run_in_children_of_the_worker_with_the_model_already_loaded(as_job, model_dir):
    assert model_worker.call("precompute.live.cache:loaded") == [(model_dir, "cpu")]
    assert model_worker.call("os:getppid") == as_job.pid
    for _ in range(2):  # each in a new child, each finding the model loaded
        tokens, acts = model_worker.call("precompute.live.probe:probe_text", model_dir, "A B C D A", [HOOK])
        assert tokens == ["A", "B", "C", "D", "A"] and acts[HOOK].shape == (5, 4, 32)
    assert psutil.Process(as_job.pid).is_running()


def test_a_jobs_error_comes_back_as_its_own_exception(as_job, model_dir):
    with pytest.raises(NeurodashError, match="has no hook 'blocks.9.nohook'"):
        model_worker.call("precompute.live.probe:probe_text", model_dir, "A B", ["blocks.9.nohook"])


def test_progress_comes_back_to_the_job(as_job):
    seen = []
    assert model_worker.call("precompute.live.worker:count", 3, progress=lambda *a: seen.append(a)) == 3
    assert seen == [(1, 3), (2, 3), (3, 3)]


def _call_and_hang(worker: model_worker.ModelWorker) -> None:
    model_worker.current = worker
    model_worker.call("time:sleep", 60)


def test_a_cancelled_jobs_child_exits_at_once(worker):
    """Dash cancels a job by killing its process: the worker's child running it must not run on."""
    job = multiprocessing.get_context("fork").Process(target=_call_and_hang, args=(worker,))
    job.start()
    children = _wait_for(lambda: psutil.Process(worker.pid).children())
    job.kill()
    job.join()
    gone, alive = psutil.wait_procs(children, timeout=5)
    assert not alive and len(gone) == 1
    assert psutil.Process(worker.pid).is_running()  # the worker itself stays


def test_a_job_cancelled_while_the_worker_starts_leaves_it_serving(model_dir, monkeypatch):
    """Cancelled while waiting for the worker's handshake (it is still loading the model): the worker
    must shrug off the closed connection and serve the next job."""
    worker = model_worker.ModelWorker(model_dir)
    try:
        worker.ensure_started()
        job = multiprocessing.get_context("fork").Process(target=_call_and_hang, args=(worker,))
        job.start()
        time.sleep(1.0)  # connected, waiting for the handshake: the worker is importing torch
        job.kill()
        job.join()
        monkeypatch.setattr(model_worker, "current", worker)
        assert model_worker.call("os:getppid") == worker.pid
    finally:
        worker.stop()


def test_an_idle_worker_exits_and_the_next_job_starts_another(model_dir, monkeypatch):
    worker = model_worker.ModelWorker(model_dir, idle_s=2.0)
    try:
        worker.ensure_started()
        first = worker.pid
        psutil.Process(first).wait(timeout=60)  # starts, loads, then idles out
        worker.ensure_started()
        monkeypatch.setattr(model_worker, "current", worker)
        assert model_worker.call("os:getppid") == worker.pid != first
    finally:
        worker.stop()


def test_without_a_worker_a_job_runs_here(model_dir, monkeypatch):
    import os

    monkeypatch.setattr(model_worker, "current", None)
    assert model_worker.call("os:getpid") == os.getpid()


def _wait_for(probe, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")
