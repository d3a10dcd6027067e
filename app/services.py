"""Process-wide resources for the pages: the run store, the background worker and config summaries.

The store is opened once per server process and folder. Pages call these helpers
and ``core`` and contain no training or file-parsing logic of their own.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import multiprocessing
import os
import threading
from typing import Any, Mapping

import streamlit as st
import torch

from core.analysis import model_cost
from core.budget import BudgetFit, fit_budget
from core.data import load_raw, resolve_data_dir
from core.devices import INFERENCE_THREADS
from core.errors import ConfigError, LabError
from core.inference import ModelEntry, run_models, shipped_models
from core.models import check_model_size, normalize_model_config, stage_plan
from core.store import RunStore, resolve_store_dir
from core.worker import start_worker, worker_running

log = logging.getLogger(__name__)

torch.set_num_threads(INFERENCE_THREADS)  # this process classifies drawings; workers train with their own threads

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


def list_shipped() -> list[ModelEntry]:
    """Return the shipped models, or none with a warning when a checkpoint cannot be read."""
    try:
        return shipped_models()
    except LabError as error:
        st.warning(f"A shipped checkpoint could not be read: {error}")
        return []


def list_models(store: RunStore) -> list[ModelEntry]:
    """Return the shipped models first, then the completed runs."""
    return list_shipped() + run_models(store)


@st.cache_data(show_spinner=False, max_entries=256)
def describe_cost(config_json: str) -> dict[str, Any]:
    """Return the parameters, multiply-adds, receptive field, stage plan and layer table of a valid config."""
    cost = model_cost(json.loads(config_json), layers=True)
    return {
        "params": cost.params,
        "flops": cost.flops,
        "receptive_field": tuple(cost.receptive_field),
        "stages": cost.stages,
        "layers": [dataclasses.asdict(layer) for layer in cost.layers],
    }


@st.cache_data(show_spinner="Fitting the width to the budget...", max_entries=256)
def fit_to_budget(config_json: str, budget: int) -> BudgetFit:
    """Fit a config to a parameter budget (up to about a second), once per config and budget."""
    return fit_budget(json.loads(config_json), budget)


@st.cache_resource(show_spinner="Loading the MNIST test set...")
def mnist_test_set(data_dir: str) -> tuple[Any, Any]:
    """Return the official test images (10000, 28, 28) uint8 and labels, loaded once per process."""
    _, _, images, labels = load_raw(data_dir, download=False)
    return images, labels


def stage_table(stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of input size, output size, channels and receptive field per stage, for spatial stage plans."""
    rows = []
    for stage in stages:
        if "in_hw" not in stage:
            continue  # a fully connected layer has no spatial size
        row = {
            "stage": stage["stage"],
            "input": "x".join(map(str, stage["in_hw"])),
            "output": "x".join(map(str, stage["out_hw"])),
            "channels": stage.get("channels"),
        }
        if "rf" in stage:
            row["receptive field h"], row["receptive field w"] = stage["rf"]
        rows.append(row)
    return rows


def config_changes(before: Any, after: Any, path: str = "") -> list[str]:
    """List the settings that differ between two plain-typed configs, as 'path old -> new'."""
    if isinstance(before, dict) and isinstance(after, dict):
        changes = []
        for key in after:
            changes += config_changes(before.get(key), after[key], f"{path}.{key}" if path else str(key))
        return changes
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after) and any(
        isinstance(item, (dict, list)) for item in after
    ):
        changes = []
        for index, (old, new) in enumerate(zip(before, after)):
            changes += config_changes(old, new, f"{path}[{index}]")
        return changes
    return [] if before == after else [f"{path} {before} -> {after}"]
