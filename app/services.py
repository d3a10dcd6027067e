"""Process-wide resources for the pages: the run store, the background worker and config summaries.

The store is opened once per server process and folder. Pages call these helpers
and ``core`` and contain no training or file-parsing logic of their own.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import threading
from typing import Any, Mapping

import streamlit as st

from core.data import resolve_data_dir
from core.errors import ConfigError, LabError
from core.inference import ModelEntry, run_models, shipped_models
from core.models import check_model_size, normalize_model_config, stage_plan
from core.store import RunStore, resolve_store_dir
from core.worker import start_worker, worker_running

log = logging.getLogger(__name__)

REFRESH_ENV = "MNIST_LAB_REFRESH_S"  # seconds between live chart refreshes; the load test sets 0.5
DEFAULT_REFRESH_S = 2.0
REFRESH_RANGE_S = (0.1, 3600.0)
NO_WORKER_ENV = "MNIST_LAB_NO_WORKER"  # set to 1 to run the app without starting a worker (tests)


def read_refresh_s(environ: Mapping[str, str] = os.environ) -> float:
    """Parse the live refresh interval in seconds from $MNIST_LAB_REFRESH_S (default 2.0).

    Raises ConfigError naming the variable and its value when it is not a number in REFRESH_RANGE_S.
    """
    raw = environ.get(REFRESH_ENV, "").strip()
    if not raw:
        return DEFAULT_REFRESH_S
    low, high = REFRESH_RANGE_S
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{REFRESH_ENV}={raw!r} is not a number; set it to the seconds between live chart refreshes, for example 2") from None
    if not (math.isfinite(value) and low <= value <= high):
        raise ConfigError(f"{REFRESH_ENV}={raw!r} is out of range; use {low:g} to {high:g} seconds")
    return value


REFRESH_S = read_refresh_s()  # live charts poll the store this often while a run is queued or running


def get_store() -> RunStore:
    """Return the store at $MNIST_LAB_STORE (default ./runs), opened once per process and folder."""
    return _open_store(str(resolve_store_dir().resolve()))


@st.cache_resource(show_spinner=False)
def _open_store(root: str) -> RunStore:
    store = RunStore(root)
    recovered = store.recover_stale_runs()
    for run_id in recovered:
        log.warning("run %d: marked interrupted at app start; its training process was gone", run_id)
    return store


_worker_lock = threading.Lock()
_workers: dict[str, multiprocessing.Process] = {}


def ensure_worker() -> str:
    """Make sure a worker serves the store, starting one if none runs; return a status line.

    Called on every page run, so a worker that crashed is replaced at the next interaction.
    """
    if os.environ.get(NO_WORKER_ENV) == "1":
        return "worker disabled"
    root = str(get_store().root)
    with _worker_lock:
        process = _workers.get(root)
        if process is not None and process.is_alive():
            return f"worker pid {process.pid}"
        if worker_running(root):
            return "worker running in another process"
        process = start_worker(root, str(resolve_data_dir().resolve()))
        if process is None:
            return "worker running in another process"
        _workers[root] = process
        return f"worker pid {process.pid}"


@st.cache_data(show_spinner=False, max_entries=256)
def describe_config(config_json: str) -> dict[str, Any]:
    """Return the complete config, parameter count and stage plan, or the config error."""
    import json

    config = json.loads(config_json)
    try:
        complete = normalize_model_config(config)
        return {
            "config": complete,
            "params": check_model_size(complete),
            "plan": stage_plan(complete),
            "error": None,
        }
    except LabError as error:
        return {"config": None, "params": None, "plan": [], "error": str(error)}


def list_models(store: RunStore) -> list[ModelEntry]:
    """Shipped models first, then completed runs."""
    entries = []
    try:
        entries += shipped_models()
    except LabError as error:
        st.warning(f"A shipped checkpoint could not be read: {error}")
    return entries + run_models(store)
