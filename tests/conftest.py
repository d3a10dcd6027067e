"""Shared fixtures: real MNIST from $MNIST_DATA_DIR and a dense model trained once per session.

MNIST_DATA_DIR defaults to ../shared/data relative to the repository root. No test
downloads anything: MNIST_MIRRORS points every download attempt at a closed port
on 127.0.0.1, and child processes (CLI, worker) inherit that setting.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.helpers import CLOSED_LOCAL_MIRROR, DATA_DIR

# Set at import, before any test or child process runs, so a missing file never triggers a real download.
os.environ["MNIST_MIRRORS"] = CLOSED_LOCAL_MIRROR
os.environ["MNIST_DATA_DIR"] = str(DATA_DIR)
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost,::1"

# One intra-op thread per process, here and in child processes (OMP_NUM_THREADS is inherited).
# The suite runs a worker, training processes and CLI calls side by side, and two threads
# each oversubscribe a small machine. Measured on 2 cores with another training job running:
# one dense epoch on 3,000 images took 0.2 s with one thread and 4.6 s with two.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    from core.data import IDX_FILES, raw_folder

    missing = [name for name in IDX_FILES if not (raw_folder(DATA_DIR) / name).is_file()]
    if missing:
        pytest.fail(f"MNIST IDX files {missing} not found in {raw_folder(DATA_DIR)}; set MNIST_DATA_DIR to a folder with MNIST/raw/")
    return DATA_DIR


@pytest.fixture(scope="session")
def mnist(data_dir):
    """All of MNIST on the CPU: 55,000 train, 5,000 validation and 10,000 test images."""
    from core.data import load_mnist

    return load_mnist(data_dir, download=False)


@pytest.fixture(scope="session")
def dense_result(mnist):
    """A dense model trained for 2 epochs on 5,000 images (seconds on a CPU)."""
    from core.training import train

    return train({"arch": "dense"}, {"epochs": 2, "train_subset": 5000, "device": "cpu"}, data=mnist)


@pytest.fixture(scope="session")
def dense_checkpoint(dense_result, tmp_path_factory) -> Path:
    """The session's dense model saved as a .safetensors checkpoint."""
    from core.checkpoints import save_checkpoint

    path = tmp_path_factory.mktemp("dense") / "dense.safetensors"
    info = {"test_accuracy": dense_result.test.accuracy, "params": dense_result.params}
    return save_checkpoint(path, dense_result.model, dense_result.model_config, info)


@pytest.fixture
def app_store(tmp_path, monkeypatch, data_dir) -> Path:
    """A fresh run store for a page under AppTest, with MNIST from $MNIST_DATA_DIR and no worker process."""
    store = tmp_path / "store"
    monkeypatch.setenv("MNIST_LAB_STORE", str(store))
    monkeypatch.setenv("MNIST_DATA_DIR", str(data_dir))
    monkeypatch.setenv("MNIST_LAB_NO_WORKER", "1")
    return store
