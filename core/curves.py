"""Training curves for the Compare page, and its table rows for seed groups and ensembles.

Curves are smoothed with the debiased exponential moving average of TensorBoard's
scalar charts (``resmoothDataset`` in tensorboard/components/vz_line_chart2/line-chart.ts).
A seed group is drawn as the mean of its completed runs, resampled onto one x grid,
with a band for their spread.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from core.compare import Subject, cost_summary, receptive_field_text, seed_groups, stored_outputs_paths
from core.inference import ModelEntry
from core.stats import mean_and_std
from core.store import RunStore

X_AXES = {"step": "step", "epoch": "epoch", "wall_time_s": "wall time (s)"}
STEP_LOSS = "train_loss_step"  # the training loss logged every few steps
EPOCH_METRICS = ("train_loss", "val_loss", "train_accuracy", "val_accuracy")
METRIC_NAMES = {
    STEP_LOSS: "train loss (step)", "train_loss": "train loss", "val_loss": "validation loss",
    "train_accuracy": "train accuracy", "val_accuracy": "validation accuracy",
}
BANDS = {"range": "min to max", "std": "mean ± std"}
MAX_SMOOTHING = 0.99
MAX_GRID_POINTS = 1000  # a group's mean curve gets at most this many points


def smooth_ema(values: Iterable[float], weight: float) -> np.ndarray:
    """Smooth a series with TensorBoard's debiased exponential moving average.

    The average starts at 0 and is divided by 1 - weight**n, where n counts the
    finite values so far, so early points are not pulled towards 0. Non-finite
    values pass through without updating the average, and a constant series stays as it is.
    """
    series = np.asarray(list(values), dtype=np.float64)
    if not 0.0 <= weight <= MAX_SMOOTHING:
        raise ValueError(f"smoothing weight {weight} is outside 0 to {MAX_SMOOTHING}; pick a value in that range")
    if weight == 0 or len(series) == 0 or np.all(series == series[0]):
        return series.copy()

    smoothed = series.copy()
    last, count = 0.0, 0
    for index, value in enumerate(series):
        if not np.isfinite(value):
            continue
        last = last * weight + (1 - weight) * value
        count += 1
        smoothed[index] = last / (1 - weight**count)
    return smoothed


# -- the data behind one chart line ------------------------------------------------------------------


@dataclass
class RunHistory:
    """One training run's logged points: steps (step, epoch, train_loss, wall_time_s) and epoch rows."""

    steps: list[dict[str, Any]]
    epochs: list[dict[str, Any]]


@dataclass
class CurveSource:
    """One table row that has training curves: a run, a shipped model, or a seed group's completed runs."""

    key: str
    label: str
    histories: list[RunHistory]
    is_group: bool = False
    color_index: int = 0  # position of its row among the selected rows, so every chart gives it the same colour


@dataclass
class Curve:
    """One metric of one source on the chosen x axis: smoothed values, raw values and a group's band."""

    label: str
    metric: str
    color_index: int  # copied from the source
    x: np.ndarray
    y: np.ndarray  # smoothed
    raw: np.ndarray  # unsmoothed (a group's mean of its raw runs)
    low: np.ndarray | None = None  # a group's band; None for a single run
    high: np.ndarray | None = None
    runs: int = 1


def metric_points(history: RunHistory, metric: str, x_axis: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (x, y) of one metric of one run on ``x_axis`` ("step", "epoch" or "wall_time_s").

    Epoch rows are placed at the end of their epoch. On the step axis that is the
    epoch times the steps per epoch, read from the step points. Step points without
    a wall time (shipped checkpoints keep none) get one interpolated from the epoch rows.
    Points whose value or position is unknown are left out.
    """
    if x_axis not in X_AXES:
        raise ValueError(f"unknown x axis {x_axis!r}; use one of {', '.join(X_AXES)}")
    if metric == STEP_LOSS:
        points = [p for p in history.steps if p.get("train_loss") is not None]
        values = [p["train_loss"] for p in points]
        positions = [_step_position(p, history, x_axis) for p in points]
    elif metric in EPOCH_METRICS:
        points = [e for e in history.epochs if e.get(metric) is not None]
        values = [e[metric] for e in points]
        positions = [_epoch_position(e, history, x_axis) for e in points]
    else:
        raise ValueError(f"unknown metric {metric!r}; use one of {', '.join(METRIC_NAMES)}")

    pairs = [(x, y) for x, y in zip(positions, values) if x is not None and np.isfinite(x)]
    if not pairs:
        return np.zeros(0), np.zeros(0)
    x, y = np.asarray(pairs, dtype=np.float64).T
    order = np.argsort(x, kind="stable")
    return x[order], y[order]


def _steps_per_epoch(history: RunHistory) -> float | None:
    last = next((p for p in reversed(history.steps) if p.get("epoch")), None)
    return last["step"] / last["epoch"] if last else None


def _step_position(point: dict[str, Any], history: RunHistory, x_axis: str) -> float | None:
    if x_axis == "step":
        return point["step"]
    if x_axis == "epoch":
        return point["epoch"]
    if point.get("wall_time_s") is not None:
        return point["wall_time_s"]
    timed = [e for e in history.epochs if e.get("wall_time_s") is not None]
    if not timed:
        return None
    epochs = [0.0] + [e["epoch"] for e in timed]
    times = [0.0] + [e["wall_time_s"] for e in timed]
    return float(np.interp(point["epoch"], epochs, times))


def _epoch_position(row: dict[str, Any], history: RunHistory, x_axis: str) -> float | None:
    if x_axis == "epoch":
        return row["epoch"]
    if x_axis == "wall_time_s":
        return row.get("wall_time_s")
    steps_per_epoch = _steps_per_epoch(history)
    return row["epoch"] * steps_per_epoch if steps_per_epoch else None


def resample(series: list[tuple[np.ndarray, np.ndarray]], max_points: int = MAX_GRID_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Put several runs' (x, y) onto one x grid by linear interpolation; return (grid, values (runs, points)).

    The grid covers only the x range every run reaches, so the mean never mixes
    in a run that has stopped. It is the union of the runs' x values there, or
    ``max_points`` evenly spaced values when that union is longer.
    """
    series = [(x, y) for x, y in series if len(x)]
    if not series:
        return np.zeros(0), np.zeros((0, 0))
    low = max(float(x[0]) for x, _ in series)
    high = min(float(x[-1]) for x, _ in series)
    if low > high:
        return np.zeros(0), np.zeros((len(series), 0))

    grid = np.unique(np.concatenate([x[(x >= low) & (x <= high)] for x, _ in series]))
    if len(grid) > max_points:
        grid = np.linspace(low, high, max_points)
    values = np.stack([np.interp(grid, x, y) for x, y in series])
    return grid, values


def align_epochs(series: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Put several runs' per-epoch (x, y) side by side by epoch; return (mean x per epoch, values (runs, epochs)).

    Seeds reach each epoch at different wall times, so on that axis resampling onto
    a shared x range can leave nothing (one epoch each: no overlap at all). Epochs
    common to every run are kept, and each is drawn at the runs' mean position.
    """
    count = min(len(x) for x, _ in series)
    grid = np.mean([x[:count] for x, _ in series], axis=0)
    return grid, np.stack([y[:count] for _, y in series])


def build_curve(source: CurveSource, metric: str, x_axis: str, *, smoothing: float = 0.0, band: str = "range") -> Curve | None:
    """Return the source's curve of ``metric``, or None when it logged no such points.

    A group's runs are resampled onto one grid (epoch metrics: aligned by epoch) and smoothed one by one. Its curve
    is their mean, and its band is their min to max (``band="range"``) or the mean
    ± their sample standard deviation (``band="std"``).
    """
    if band not in BANDS:
        raise ValueError(f"unknown band {band!r}; use one of {', '.join(BANDS)}")
    series = [metric_points(history, metric, x_axis) for history in source.histories]
    series = [(x, y) for x, y in series if len(x)]
    if not series:
        return None

    if not source.is_group:
        x, raw = series[0]
        return Curve(source.label, metric, source.color_index, x, smooth_ema(raw, smoothing), raw)

    grid, raw_runs = align_epochs(series) if metric in EPOCH_METRICS else resample(series)
    if not len(grid):
        return None
    smoothed_runs = np.stack([smooth_ema(run, smoothing) for run in raw_runs])
    mean = smoothed_runs.mean(axis=0)
    if band == "range":
        low, high = smoothed_runs.min(axis=0), smoothed_runs.max(axis=0)
    else:
        spread = smoothed_runs.std(axis=0, ddof=1) if len(smoothed_runs) > 1 else np.zeros_like(mean)
        low, high = mean - spread, mean + spread
    return Curve(source.label, metric, source.color_index, grid, mean, raw_runs.mean(axis=0), low, high, runs=len(series))


def build_curves(
    sources: list[CurveSource], metric: str, x_axis: str, *, smoothing: float = 0.0, band: str = "range"
) -> list[Curve]:
    """Return one curve per source that logged ``metric``, in the order of ``sources``."""
    curves = [build_curve(source, metric, x_axis, smoothing=smoothing, band=band) for source in sources]
    return [curve for curve in curves if curve is not None]


def curve_sources(
    store: RunStore, selected: list[dict[str, Any]], shipped: list[ModelEntry], subjects: dict[str, Subject]
) -> tuple[list[CurveSource], list[str]]:
    """Return the curve sources of the selected table rows and a note for each row without curves.

    Runs read their points from the store in one query per table. Shipped models
    carry theirs in the checkpoint record. A seed group uses its completed runs.
    """
    shipped_by_key = {model.key: model for model in shipped}
    notes: list[str] = []
    plan: list[tuple[int, dict[str, Any], list[int] | None]] = []
    for position, row in enumerate(selected):
        kind, _, value = row["key"].partition(":")
        if kind == "run":
            plan.append((position, row, [int(value)]))
        elif kind == "group" and row["key"] in subjects:
            plan.append((position, row, list(subjects[row["key"]].info.get("run_ids", []))))
        elif kind == "group":
            notes.append(f"{row['name']} has no completed seed yet, so it has no curves to average.")
        elif kind == "shipped" and row["key"] in shipped_by_key:
            plan.append((position, row, None))
        elif kind == "ensemble":
            notes.append(f"{row['name']} is an ensemble of trained models, so it has no training curves of its own.")

    run_ids = sorted({run_id for _, _, ids in plan if ids for run_id in ids})
    steps, epochs = _group_by_run(store.step_metrics(run_ids)), _group_by_run(store.epoch_metrics(run_ids))

    sources = []
    for position, row, ids in plan:
        if ids is None:
            history = shipped_by_key[row["key"]].info.get("history") or {}
            histories = [RunHistory(list(history.get("steps", [])), list(history.get("epochs", [])))]
        else:
            histories = [RunHistory(steps.get(run_id, []), epochs.get(run_id, [])) for run_id in ids]
        is_group = row["key"].startswith("group:")
        if not any(h.steps or h.epochs for h in histories):
            notes.append(f"{row['name']} has no logged training points yet.")
            continue
        sources.append(CurveSource(row["key"], row["name"], histories, is_group=is_group, color_index=position))
    return sources, notes


def _group_by_run(points: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    by_run: dict[int, list[dict[str, Any]]] = {}
    for point in points:
        by_run.setdefault(point["run_id"], []).append(point)
    return by_run


# -- best, last, min and max per metric ---------------------------------------------------------------


def summary_rows(sources: list[CurveSource]) -> list[dict[str, Any]]:
    """Return best, last, min and max of each epoch metric per source, from the unsmoothed epoch values.

    Best is the minimum of a loss and the maximum of an accuracy. A group's values
    are those of its mean curve over the epochs every completed run reached.
    """
    rows = []
    for source in sources:
        for metric in EPOCH_METRICS:
            series = [metric_points(history, metric, "epoch") for history in source.histories]
            series = [(x, y) for x, y in series if len(x)]
            if not series:
                continue
            epochs, values = (series[0] if not source.is_group else _mean_over_common_epochs(series))
            if not len(values):
                continue
            best_index = int(np.argmin(values) if metric.endswith("loss") else np.argmax(values))
            rows.append(
                {
                    "name": source.label, "metric": METRIC_NAMES[metric], "runs": len(series),
                    "best": float(values[best_index]), "best_epoch": int(epochs[best_index]),
                    "last": float(values[-1]), "min": float(np.min(values)), "max": float(np.max(values)),
                }
            )
    return rows


def _mean_over_common_epochs(series: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    common = set(series[0][0].tolist())
    for x, _ in series[1:]:
        common &= set(x.tolist())
    epochs = np.array(sorted(common))
    values = np.mean([[dict(zip(x.tolist(), y.tolist()))[epoch] for epoch in epochs] for x, y in series], axis=0)
    return epochs, np.asarray(values, dtype=np.float64)


# -- Compare table rows for seed groups and ensembles -----------------------------------------------


def group_rows(runs: list[dict[str, Any]], subjects: dict[str, Subject]) -> list[dict[str, Any]]:
    """Return one Compare table row per seed group, with its test accuracy as mean and std over completed seeds.

    A group whose runs are all still queued or running gets a row without accuracy,
    so it shows up as soon as it is started.
    """
    rows = []
    for group_id, members in seed_groups(runs).items():
        key = f"group:{group_id}"
        done = [run for run in members if run["status"] == "completed" and run["test_accuracy"] is not None]
        accuracies = [run["test_accuracy"] for run in done]
        mean, std = mean_and_std(accuracies) if accuracies else (None, None)
        best_val = [run["best_val_accuracy"] for run in done if run["best_val_accuracy"] is not None]
        first = members[0]
        cost = cost_summary(first["model_config"], first)
        base = first["name"].rsplit(" seed ", 1)[0]
        name = subjects[key].label if key in subjects else f"group {group_id} {base} (no seed completed yet)"
        rows.append(
            {
                "key": key, "name": name, "architecture": first["arch"], "params": first["params"],
                "flops": cost["flops"], "receptive_field": receptive_field_text(cost["receptive_field"]),
                "best_val_accuracy": float(np.mean(best_val)) if best_val else None,
                "test_accuracy": mean, "test_accuracy_std": std, "seeds": len(done), "pending_seeds": len(members) - len(done),
                "epochs": max((run["epochs_completed"] for run in done), default=None),
                "training_time_s": sum(run["wall_time_s"] or 0.0 for run in done) or None,
                "device": first["device"], "status": "seed group",
            }
        )
    return rows


def ensemble_row(subject: Subject, test_accuracy: float | None) -> dict[str, Any]:
    """Return the Compare table row of an ensemble; ``test_accuracy`` comes from its members' stored outputs."""
    costs = [cost_summary(member.info.get("model_config") or {}, member.info) for member in subject.members]
    flops = [cost["flops"] for cost in costs]
    return {
        "key": subject.key, "name": subject.label, "architecture": subject.arch, "params": subject.params,
        "flops": sum(flops) if None not in flops else None, "receptive_field": None, "best_val_accuracy": None,
        "test_accuracy": test_accuracy, "test_accuracy_std": None, "seeds": None, "pending_seeds": None,
        "epochs": None, "training_time_s": None, "device": None, "status": f"ensemble of {len(subject.members)}",
    }


def table_key(rows: list[dict[str, Any]]) -> str:
    """Return a short digest of the row keys in order; it changes whenever a row is added, removed or moved."""
    return hashlib.sha1("\n".join(row["key"] for row in rows).encode()).hexdigest()[:12]


# -- test outputs of subjects -------------------------------------------------------------------------


def outputs_fingerprint(subject: Subject, store: RunStore) -> tuple:
    """Return what a subject's test outputs depend on: per member, the mtimes of its checkpoint and stored outputs."""
    members = []
    for member in subject.members:
        files = [member.path, *stored_outputs_paths(member, store)]
        members.append((member.key, str(member.path), tuple(_mtime_ns(path) for path in files)))
    return subject.key, tuple(members)


def _mtime_ns(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None  # a missing file: loading the outputs reports it


def members_without_outputs(subject: Subject, store: RunStore) -> list[ModelEntry]:
    """Return the members whose test outputs are not stored yet, so they are evaluated on the test set first."""
    return [m for m in subject.members if not any(path.is_file() for path in stored_outputs_paths(m, store))]


def subject_tags(keys: list[str], a_key: str, b_key: str) -> dict[str, str]:
    """Return short tags for image captions: A and B for the pair, then C, D, ... for the other keys in order."""
    ordered = [a_key, b_key] + [key for key in keys if key not in (a_key, b_key)]
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return {key: letters[i] if i < len(letters) else f"S{i + 1}" for i, key in enumerate(ordered)}
