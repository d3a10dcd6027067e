"""Paths and small utilities shared by the test modules."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("MNIST_DATA_DIR") or REPO_ROOT.parent / "shared" / "data").resolve()
SHIPPED_CNN = REPO_ROOT / "checkpoints" / "cnn.safetensors"
CLOSED_LOCAL_MIRROR = "http://127.0.0.1:9/"  # port 9 (discard) normally has no listener, so connecting fails at once
RUN_TIMEOUT_S = 180  # a short worker run spawns a process, imports torch and loads MNIST first


def python_env() -> dict[str, str]:
    """Return the environment for child Python processes, with the repository on the import path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO_ROOT), env.get("PYTHONPATH", "")] if p)
    return env


def run_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``python -m core ARGS`` from the repository root and capture its output as text."""
    return subprocess.run(
        [sys.executable, "-m", "core", *args],
        cwd=REPO_ROOT,
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_for(condition: Callable[[], object], *, timeout: float, interval: float = 0.2, description: str = "condition"):
    """Poll ``condition`` until it returns a truthy value and return it; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {description}")


def run_cli_parallel(commands: dict[str, list[str]], timeout: float = 240) -> dict[str, subprocess.CompletedProcess]:
    """Run several ``python -m core`` commands at once; return their results by key."""
    started = {
        key: subprocess.Popen(
            [sys.executable, "-m", "core", *args],
            cwd=REPO_ROOT,
            env=python_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for key, args in commands.items()
    }
    results = {}
    for key, process in started.items():
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        results[key] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    return results


def queue_run(store, *, epochs: int, train_subset: int, name: str | None = None, arch: str = "dense", **train: object) -> int:
    """Validate a small CPU run like the app does and queue it in ``store``; return its id."""
    from core.models.config import config_to_dict
    from core.training import prepare_run

    model_config, train_config = prepare_run({"arch": arch}, {"epochs": epochs, "train_subset": train_subset, "device": "cpu", **train})
    return store.create_run(model_config, config_to_dict(train_config), name=name)


def status_of(store, run_id: int, *statuses: str):
    """Return the run when its status is one of ``statuses``, else None (for ``wait_for``)."""
    run = store.get_run(run_id)
    return run if run["status"] in statuses else None


def wait_until_training(store, run_id: int) -> dict:
    """Wait until the run is running and has reported loss points; return the run."""
    wait_for(lambda: store.step_metrics([run_id]), timeout=RUN_TIMEOUT_S, description=f"run {run_id} to report loss points")
    return store.get_run(run_id)
