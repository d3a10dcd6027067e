"""The data behind the Compare page: one row per shipped model and stored run, and their curves.

The page and the benchmark call the same functions, so the timed path is the one users wait for.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Mapping

from core.analysis import model_cost
from core.errors import LabError
from core.inference import ModelEntry
from core.store import RunStore

TABLE_COLUMNS = (
    "name", "architecture", "params", "flops", "receptive_field", "best_val_accuracy", "test_accuracy",
    "epochs", "training_time_s", "device", "status",
)


@functools.lru_cache(maxsize=256)
def _measured_cost(config_json: str) -> tuple[int | None, tuple[int, int] | None]:
    try:
        cost = model_cost(json.loads(config_json))
    except LabError:
        return None, None
    return cost.flops, tuple(cost.receptive_field)


def cost_summary(model_config: Mapping[str, Any], info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Return "flops" and "receptive_field" from a saved record, measuring them when it lacks them.

    Records written before FLOPs were measured have neither; a config that no
    longer builds gets None for both. Measurements are cached per config.
    """
    info = info or {}
    if info.get("flops") is not None and info.get("receptive_field"):
        return {"flops": info["flops"], "receptive_field": tuple(info["receptive_field"])}
    flops, field = _measured_cost(json.dumps(model_config, sort_keys=True))
    return {"flops": flops, "receptive_field": field}


def _field_text(receptive_field) -> str | None:
    return "{} x {}".format(*receptive_field) if receptive_field else None


def table_rows(runs: list[dict[str, Any]], shipped: list[ModelEntry]) -> list[dict[str, Any]]:
    """Return the Compare table: shipped models first, then ``runs`` (from ``RunStore.list_runs``)."""
    rows = []
    for model in shipped:
        info = model.info
        cost = cost_summary(info.get("model_config") or {}, info)
        rows.append(
            {
                "key": model.key, "name": model.label, "architecture": model.arch, "params": model.params,
                "flops": cost["flops"], "receptive_field": _field_text(cost["receptive_field"]),
                "best_val_accuracy": info.get("best_val_accuracy"), "test_accuracy": model.test_accuracy,
                "epochs": info.get("epochs_completed"), "training_time_s": info.get("wall_time_s"),
                "device": info.get("device"), "status": "shipped",
            }
        )
    for run in runs:
        cost = cost_summary(run["model_config"], run)
        rows.append(
            {
                "key": f"run:{run['id']}", "name": f"#{run['id']} {run['name']}", "architecture": run["arch"],
                "params": run["params"], "flops": cost["flops"], "receptive_field": _field_text(cost["receptive_field"]),
                "best_val_accuracy": run["best_val_accuracy"], "test_accuracy": run["test_accuracy"],
                "epochs": run["epochs_completed"], "training_time_s": run["wall_time_s"], "device": run["device"],
                "status": run["status"],
            }
        )
    return rows


def curves(
    store: RunStore, selected: list[dict[str, Any]], shipped: list[ModelEntry]
) -> tuple[dict[int, str], list[dict[str, Any]], list[dict[str, Any]]]:
    """Return (names by id, step points, epoch points) of the selected table rows.

    Stored runs keep their ids. Shipped models carry their curves in their
    checkpoint's JSON record and get negative ids, so they never clash with a run.
    """
    keys = {row["key"]: row for row in selected}
    run_ids = [int(key.split(":")[1]) for key in keys if key.startswith("run:")]
    names = {run_id: keys[f"run:{run_id}"]["name"] for run_id in run_ids}
    steps, epochs = store.step_metrics(run_ids), store.epoch_metrics(run_ids)
    for index, model in enumerate(m for m in shipped if m.key in keys):
        fake_id = -(index + 1)
        names[fake_id] = model.label
        history = model.info.get("history", {})
        epochs += [{**e, "run_id": fake_id} for e in history.get("epochs", [])]
        steps += [{**s, "run_id": fake_id} for s in history.get("steps", [])]
    return names, steps, epochs
