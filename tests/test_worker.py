"""Background worker as a real process: queued runs in order, cancel, SIGKILL of a training process, stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from core.store import RunStore, pid_alive
from core.worker import start_worker, stop_worker, worker_running
from tests.helpers import RUN_TIMEOUT_S, queue_run, status_of, wait_for, wait_until_training

pytestmark = pytest.mark.slow


@pytest.fixture
def store(tmp_path) -> RunStore:
    return RunStore(tmp_path / "store")


@pytest.fixture
def worker(store, data_dir):
    process = start_worker(store.root, str(data_dir))
    assert process is not None, "another worker already holds this store's lock"
    try:
        yield process
    finally:
        stop_worker(process)


def test_second_worker_not_started(store, worker, data_dir):
    # The worker takes the store's lock once it is up; start_worker checks that lock.
    wait_for(lambda: worker_running(store.root), timeout=60, description="the worker to take the store lock")

    assert start_worker(store.root, str(data_dir)) is None
    assert worker.is_alive()
    assert (store.root / "worker.lock").read_text() == str(worker.pid)


def test_queued_runs_complete_in_order(store, worker):
    first = queue_run(store, epochs=1, train_subset=1000, name="first")
    second = queue_run(store, epochs=1, train_subset=1000, name="second")

    done = wait_for(lambda: status_of(store, second, "completed", "failed"), timeout=2 * RUN_TIMEOUT_S, description="the second run")
    run_1 = store.get_run(first)
    run_2 = done

    assert run_1["status"] == "completed", run_1["error"]
    assert run_2["status"] == "completed", run_2["error"]
    assert run_1["finished_at"] <= run_2["started_at"], "runs must train one at a time"
    assert run_1["test_accuracy"] > 0.5
    assert os.path.isfile(run_1["checkpoint"])
    assert run_1["pid"] != run_2["pid"], "each run gets a fresh training process"
    assert [e["epoch"] for e in store.epoch_metrics([first])] == [1]


def test_cancel_running_run(store, worker):
    run_id = queue_run(store, epochs=300, train_subset=2000)
    wait_until_training(store, run_id)

    assert store.request_cancel(run_id) == "running"

    run = wait_for(lambda: status_of(store, run_id, "cancelled", "completed", "failed"), timeout=60, description="the cancel")
    assert run["status"] == "cancelled"
    assert "cancelled at step" in run["error"] or "cancelled after epoch" in run["error"]
    assert run["checkpoint"] is None


def test_sigkill_marks_interrupted(store, worker):
    doomed = queue_run(store, epochs=300, train_subset=2000, name="doomed")
    survivor = queue_run(store, epochs=1, train_subset=1000, name="survivor")
    pid = wait_until_training(store, doomed)["pid"]

    os.kill(pid, signal.SIGKILL)

    run = wait_for(lambda: status_of(store, doomed, "failed", "interrupted", "completed"), timeout=60, description="the killed run")
    assert run["status"] == "interrupted"
    assert "SIGKILL" in run["error"]
    assert str(pid) in run["error"]
    after = wait_for(lambda: status_of(store, survivor, "completed", "failed"), timeout=RUN_TIMEOUT_S, description="the next run")
    assert after["status"] == "completed", after["error"]


def test_stop_interrupts_run(store, data_dir):
    process = start_worker(store.root, str(data_dir))
    assert process is not None
    try:
        run_id = queue_run(store, epochs=300, train_subset=2000)
        training_pid = wait_until_training(store, run_id)["pid"]
    finally:
        stop_worker(process)

    run = store.get_run(run_id)
    assert not process.is_alive()
    assert run["status"] == "interrupted"
    assert "stopped while the run was training" in run["error"]
    assert wait_for(lambda: not pid_alive(training_pid), timeout=15, description="the training process to exit")


def test_stale_run_recovered_at_start(store, data_dir):
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    run_id = queue_run(store, epochs=1, train_subset=1000)
    store.claim_next_queued()
    store.set_pid(run_id, exited.pid)

    process = start_worker(store.root, str(data_dir))
    assert process is not None
    try:
        run = wait_for(lambda: status_of(store, run_id, "interrupted"), timeout=60, description="recovery at worker start")
    finally:
        stop_worker(process)

    assert "stopped without finishing" in run["error"]
