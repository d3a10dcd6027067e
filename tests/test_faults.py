"""Faults during training: killed processes, resume, divergence, out of memory, errors in the model, full and read-only disks.

Worker tests use real processes and real signals. Disk tests mount a small
tmpfs, which needs root with mount rights; they skip with the reason elsewhere.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import torch

from core.checkpoints import load_training_state, save_training_state
from core.errors import ConfigError, StoreError
from core.models.dense import DenseNet
from core.runner import RunInterrupted, StoreCallbacks, execute_run
from core.store import RunStore, pid_alive
from core.training import Callbacks, train
from core.worker import MEMORY_LIMIT_ENV, start_worker, stop_worker
from tests.helpers import RUN_TIMEOUT_S, queue_run, run_cli, status_of, wait_for, wait_until_training

INTERRUPT_DEADLINE_S = 10.0  # a killed training process's run must show "interrupted" within this


@pytest.fixture
def store(tmp_path) -> RunStore:
    return RunStore(tmp_path / "store")


def integrity(store: RunStore) -> str:
    with sqlite3.connect(store.db_path) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


def assert_curves_continuous(store: RunStore, run_id: int, epochs: int) -> None:
    """Epoch rows 1..epochs, and loss points at increasing steps up to the run's last step."""
    run = store.get_run(run_id)
    epoch_rows = store.epoch_metrics([run_id])
    steps = [p["step"] for p in store.step_metrics([run_id])]
    positions = [p["epoch"] for p in store.step_metrics([run_id])]

    assert [e["epoch"] for e in epoch_rows] == list(range(1, epochs + 1))
    assert steps == sorted(set(steps))
    assert steps[-1] == run["total_steps"]
    assert positions == sorted(positions)


# -- resume in the training loop ------------------------------------------------


class KeepStates(Callbacks):
    """Save the state after every epoch to files, like the run store does."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.paths: list[Path] = []

    def on_checkpoint(self, state):
        self.paths.append(save_training_state(self.folder / f"epoch{state['epoch']}.safetensors", state))


DENSE = {"arch": "dense", "dropout": 0.2}  # dropout: the random stream must continue too
# Its 4-d weights train in channels_last with fused AdamW, so the loaded optimizer state must follow their layout.
SMALL_CNN = {"arch": "cnn", "stages": [{"channels": 8}, {"channels": 16}]}


@pytest.mark.parametrize(
    "model_config, train_extra",
    [
        (DENSE, {"optimizer": "adamw"}),
        (DENSE, {"optimizer": "sgd", "scheduler": "cosine"}),
        (SMALL_CNN, {"optimizer": "adamw", "train_subset": 640}),
    ],
    ids=["dense-adamw", "dense-sgd", "cnn-adamw"],
)
def test_resume_matches_uninterrupted(mnist, tmp_path, model_config, train_extra):
    train_config = {"epochs": 3, "train_subset": 2000, "batch_size": 64, "device": "cpu", **train_extra}
    states = KeepStates(tmp_path)
    whole = train(model_config, train_config, data=mnist, callbacks=states)

    resumed = train(model_config, train_config, data=mnist, resume=load_training_state(states.paths[0]))

    expected, got = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert resumed.test.accuracy == whole.test.accuracy
    assert resumed.epochs_completed == 3


def test_resume_rejects_other_batch_size(mnist, tmp_path):
    states = KeepStates(tmp_path)
    train({"arch": "dense"}, {"epochs": 2, "train_subset": 1000, "batch_size": 50, "device": "cpu"}, data=mnist, callbacks=states)

    with pytest.raises(ConfigError, match="steps per epoch"):
        train({"arch": "dense"}, {"epochs": 2, "train_subset": 1000, "batch_size": 100, "device": "cpu"}, data=mnist,
              resume=load_training_state(states.paths[0]))


def test_truncated_state_rejected(mnist, tmp_path):
    states = KeepStates(tmp_path)
    train({"arch": "dense"}, {"epochs": 1, "train_subset": 500, "device": "cpu"}, data=mnist, callbacks=states)
    path = states.paths[0]
    path.write_bytes(path.read_bytes()[:200])

    with pytest.raises(Exception, match="not readable"):
        load_training_state(path)


# -- runs stopped in-process ----------------------------------------------------


def interrupt_after_epoch(monkeypatch, epoch: int) -> None:
    """Make the store callbacks raise RunInterrupted (as SIGTERM does) right after ``epoch``'s state is saved."""
    original = StoreCallbacks.on_checkpoint

    def on_checkpoint(self, state):
        original(self, state)
        if state["epoch"] == epoch:
            raise RunInterrupted("SIGTERM: test")

    monkeypatch.setattr(StoreCallbacks, "on_checkpoint", on_checkpoint)


def start_in_process(store: RunStore, run_id: int, data_dir) -> dict:
    claimed = store.claim_next_queued()
    assert claimed["id"] == run_id
    return execute_run(store, run_id, data_dir=str(data_dir))


def test_interrupted_run_resumes_in_process(store, data_dir, monkeypatch):
    run_id = queue_run(store, epochs=3, train_subset=2000)
    with monkeypatch.context() as patch:
        interrupt_after_epoch(patch, 2)
        stopped = start_in_process(store, run_id, data_dir)

    assert stopped["status"] == "interrupted"
    assert "after epoch 2" in stopped["error"]
    assert store.training_state_path(run_id).is_file()
    store.reopen_for_resume(run_id)
    done = start_in_process(store, run_id, data_dir)

    assert done["status"] == "completed", done["error"]
    assert done["epochs_completed"] == 3
    assert not store.training_state_path(run_id).exists()
    assert_curves_continuous(store, run_id, 3)


def test_app_resume_button_continues_run(store, data_dir, monkeypatch):
    from streamlit.testing.v1 import AppTest

    run_id = queue_run(store, epochs=2, train_subset=1000)
    with monkeypatch.context() as patch:
        interrupt_after_epoch(patch, 1)
        start_in_process(store, run_id, data_dir)
    monkeypatch.setenv("MNIST_LAB_STORE", str(store.root))
    monkeypatch.setenv("MNIST_LAB_NO_WORKER", "1")
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app" / "views" / "train.py"), default_timeout=60).run()
    button = at.button(key=f"resume_{run_id}")

    assert button.label == "Resume after epoch 1"
    button.click().run()
    assert not at.exception
    assert store.get_run(run_id)["status"] == "queued"
    done = start_in_process(store, run_id, data_dir)  # what the worker does with the queued run
    assert done["status"] == "completed", done["error"]
    assert_curves_continuous(store, run_id, 2)


def test_completed_run_not_resumable(store, data_dir):
    run_id = queue_run(store, epochs=1, train_subset=500)
    start_in_process(store, run_id, data_dir)

    with pytest.raises(StoreError, match="is completed; only interrupted"):
        store.reopen_for_resume(run_id)


def fail_then_train(store, data_dir, monkeypatch, error: Exception) -> tuple[dict, dict]:
    """Run one dense run whose forward raises ``error``, then a healthy one in the same process; return both rows."""
    broken = queue_run(store, epochs=1, train_subset=500, name="broken")
    healthy = queue_run(store, epochs=1, train_subset=500, name="healthy")

    def forward(self, x):
        raise error

    with monkeypatch.context() as patch:
        patch.setattr(DenseNet, "forward", forward)
        failed = start_in_process(store, broken, data_dir)
    return failed, start_in_process(store, healthy, data_dir)


def test_model_error_fails_then_next_works(store, data_dir, monkeypatch):
    failed, ok = fail_then_train(store, data_dir, monkeypatch, RuntimeError("mat1 and mat2 shapes cannot be multiplied (64x10 and 11x10)"))

    assert failed["status"] == "failed"
    assert "RuntimeError: mat1 and mat2 shapes cannot be multiplied" in failed["error"]
    assert "in forward" in failed["error"]
    assert ok["status"] == "completed", ok["error"]


def test_cuda_style_oom_gets_own_status(store, data_dir, monkeypatch):
    failed, ok = fail_then_train(store, data_dir, monkeypatch, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"))

    assert failed["status"] == "out_of_memory"
    assert "CUDA out of memory" in failed["error"]
    assert "smaller batch size (now 128)" in failed["error"]
    assert ok["status"] == "completed", ok["error"]


def test_cli_resume_rejects_config_options(store):
    result = run_cli("--store", str(store.root), "train", "--resume", "1", "--epochs", "3")

    assert result.returncode == 2
    assert "--epochs cannot be given" in result.stderr


def test_cli_resume_unknown_run(store):
    result = run_cli("--store", str(store.root), "train", "--resume", "99")

    assert result.returncode == 2
    assert "run 99 not found" in result.stderr


def test_cli_train_needs_arch_or_resume(store):
    result = run_cli("--store", str(store.root), "train")

    assert result.returncode == 2
    assert "--arch ARCH for a new run, or --resume RUN" in result.stderr


# -- real processes -------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_mid_epoch_then_cli_resume(store, data_dir):
    run_id = queue_run(store, epochs=4, train_subset=20000, batch_size=64)
    worker = start_worker(store.root, str(data_dir))
    assert worker is not None
    try:
        run = wait_until_training(store, run_id)
        steps_per_epoch = run["total_steps"] // 4
        wait_for(
            lambda: any(p["step"] > steps_per_epoch for p in store.step_metrics([run_id])),
            timeout=RUN_TIMEOUT_S, description="loss points from the second epoch",
        )
        pid = store.get_run(run_id)["pid"]
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        stopped = wait_for(lambda: status_of(store, run_id, "interrupted", "failed", "completed"), timeout=30, description="the kill")
        noticed_s = time.monotonic() - killed_at
    finally:
        stop_worker(worker)

    print(f"SIGKILL noticed after {noticed_s:.1f} s")
    assert stopped["status"] == "interrupted"
    assert noticed_s < INTERRUPT_DEADLINE_S
    assert "SIGKILL" in stopped["error"]
    kept = stopped["epochs_completed"]
    assert 1 <= kept < 4
    assert [e["epoch"] for e in store.epoch_metrics([run_id])] == list(range(1, kept + 1))
    assert load_training_state(store.training_state_path(run_id))["epoch"] == kept
    assert integrity(store) == "ok"

    result = run_cli("--store", str(store.root), "--data-dir", str(data_dir), "train", "--resume", str(run_id), "--json", timeout=RUN_TIMEOUT_S)

    assert result.returncode == 0, result.stderr
    assert f"resuming in {store.root} after epoch {kept}" in result.stderr
    done = store.get_run(run_id)
    assert done["status"] == "completed"
    assert done["test_accuracy"] > 0.9
    assert_curves_continuous(store, run_id, 4)


@pytest.mark.slow
def test_worker_sigkill_recovered_by_next_worker(store, data_dir):
    first = queue_run(store, epochs=300, train_subset=2000, name="training when the worker died")
    second = queue_run(store, epochs=1, train_subset=1000, name="queued when the worker died")
    worker = start_worker(store.root, str(data_dir))
    assert worker is not None
    try:
        training_pid = wait_until_training(store, first)["pid"]
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(timeout=10)

        # The orphaned training process notices within a second and ends its run itself.
        stopped = wait_for(lambda: status_of(store, first, "interrupted", "failed"), timeout=INTERRUPT_DEADLINE_S * 2, description="the orphan")
        assert wait_for(lambda: not pid_alive(training_pid), timeout=15, description="the training process to exit")
        assert store.get_run(second)["status"] == "queued"
    finally:
        stop_worker(worker)

    assert stopped["status"] == "interrupted"
    assert "the app or its worker stopped" in stopped["error"]
    replacement = start_worker(store.root, str(data_dir))  # what the next app start does
    assert replacement is not None
    try:
        done = wait_for(lambda: status_of(store, second, "completed", "failed"), timeout=RUN_TIMEOUT_S, description="the queued run")
    finally:
        stop_worker(replacement)

    assert done["status"] == "completed", done["error"]
    assert store.get_run(first)["status"] == "interrupted"
    assert integrity(store) == "ok"


@pytest.mark.slow
def test_failures_end_with_own_status(store, data_dir, monkeypatch):
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "400")  # inherited by the worker's training processes
    diverging = queue_run(store, epochs=2, train_subset=2000, optimizer="sgd", lr=100.0, name="lr 100")
    too_big = queue_run(store, epochs=1, train_subset=8192, batch_size=8192, arch="cnn", name="batch 8192")
    healthy = queue_run(store, epochs=1, train_subset=1000, name="after the failures")
    worker = start_worker(store.root, str(data_dir))
    assert worker is not None
    try:
        done = wait_for(lambda: status_of(store, healthy, "completed", "failed"), timeout=3 * RUN_TIMEOUT_S, description="the last run")
    finally:
        stop_worker(worker)

    diverged, out_of_memory = store.get_run(diverging), store.get_run(too_big)
    assert diverged["status"] == "diverged"
    assert "lower the learning rate (now 100.0)" in diverged["error"]
    assert out_of_memory["status"] == "out_of_memory"
    assert "smaller batch size (now 8192)" in out_of_memory["error"]
    assert done["status"] == "completed", done["error"]


# -- full and read-only disks -----------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs, mounted for this test only."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()}); disk tests need root with mount rights")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill_disk(folder: Path) -> Path:
    """Write a file until the file system is full; return it (delete it to free the space)."""
    filler = folder / "filler.bin"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    return filler


def stored_runs(store_root: Path) -> list[int]:
    """Read run ids straight from the file; immutable mode needs no write access, so it works on a read-only disk."""
    with sqlite3.connect(f"file:{store_root / 'runs.sqlite'}?mode=ro&immutable=1", uri=True) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM runs ORDER BY id")]


def test_full_disk_clear_error_keeps_runs(small_disk):
    store = RunStore(small_disk / "store")
    earlier = [queue_run(store, epochs=1, train_subset=500, name=f"earlier {i}") for i in range(3)]
    store.add_epoch(earlier[0], {"epoch": 1, "val_accuracy": 0.9})
    filler = fill_disk(small_disk)

    with pytest.raises(StoreError, match="is full") as raised:
        for i in range(200):  # free space inside the file's pages runs out after a few rows
            store.add_step_points(earlier[0], [{"step": 1000 * i + s, "epoch": 1.0, "train_loss": 0.5} for s in range(1000)], progress=0.5)
    assert "Stored runs are kept" in str(raised.value)
    with pytest.raises(StoreError, match="is full"):
        queue_run(store, epochs=1, train_subset=500, name="x" * 100)

    filler.unlink()  # SQLite cannot even open the WAL for reading on a full disk, so check once space is back
    assert [run["id"] for run in store.list_runs()] == earlier
    assert integrity(store) == "ok"
    assert store.epoch_metrics([earlier[0]])[0]["val_accuracy"] == 0.9
    assert queue_run(store, epochs=1, train_subset=500) == earlier[-1] + 1


def test_read_only_disk_clear_error_keeps_runs(small_disk):
    store = RunStore(small_disk / "store")
    earlier = [queue_run(store, epochs=1, train_subset=500) for _ in range(2)]
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)

    with pytest.raises(StoreError, match="read-only") as raised:
        queue_run(RunStore(small_disk / "store"), epochs=1, train_subset=500)

    assert "point $MNIST_LAB_STORE or --store at a writable folder" in str(raised.value)
    assert stored_runs(store.root) == earlier


def test_app_shows_read_only_store(small_disk, monkeypatch, data_dir):
    from streamlit.testing.v1 import AppTest

    store = RunStore(small_disk / "store")
    queue_run(store, epochs=1, train_subset=500, name="kept run")
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    monkeypatch.setenv("MNIST_LAB_STORE", str(store.root))
    monkeypatch.setenv("MNIST_DATA_DIR", str(data_dir))
    monkeypatch.setenv("MNIST_LAB_NO_WORKER", "1")

    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app" / "main.py"), default_timeout=60).run()

    assert not at.exception
    errors = " ".join(e.value for e in at.error)
    assert "read-only" in errors
    assert stored_runs(store.root) == [1]
