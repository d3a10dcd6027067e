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
