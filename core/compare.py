"""The data behind the Compare page, the report and ``python -m core compare``.

One row per shipped model and stored run, their curves, and subjects (models, seed
groups, ensembles) with their test outputs and the statistics between them.

The page and the benchmark call the same functions, so the timed path is the one users wait for.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from core.analysis import model_cost
from core.errors import CheckpointError, LabError
from core.inference import SHIPPED_DIR, ModelEntry, run_models
from core.models.config import NUM_CLASSES
from core.predictions import (
    OUTPUTS_NAME, TestOutputs, cached_outputs_path, evaluate_checkpoint, load_test_outputs, shipped_outputs_path,
)
from core.stats import SIGNIFICANCE_LEVEL, bootstrap_difference, mcnemar, mean_and_std, seed_t_test
from core.store import RunStore

log = logging.getLogger(__name__)

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


def receptive_field_text(receptive_field) -> str | None:
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
                "flops": cost["flops"], "receptive_field": receptive_field_text(cost["receptive_field"]),
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
                "params": run["params"], "flops": cost["flops"], "receptive_field": receptive_field_text(cost["receptive_field"]),
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


# -- subjects: what the Compare page, the report and the CLI compare ------------------------------

SUBJECT_KINDS = ("shipped", "run", "group", "ensemble")


@dataclass
class Subject:
    """One thing to compare: a shipped model, a run, a seed group or an ensemble.

    ``members`` are the trained models behind it: the model itself, a group's
    completed seeds, or an ensemble's members.
    """

    key: str  # "shipped:cnn", "run:12", "group:12" or "ensemble:3"
    label: str
    kind: str
    arch: str
    members: list[ModelEntry]
    params: int | None
    info: dict[str, Any] = field(default_factory=dict)  # group: "seeds", "pending"; ensemble: "id", "member_keys"


@dataclass
class SubjectOutputs:
    """Test-set results of a subject: one row per member for a group, one row otherwise."""

    correct: np.ndarray  # bool (rows, images)
    predictions: np.ndarray  # int64 (rows, images)
    probabilities: np.ndarray  # float32 (images, 10): the mean over rows
    labels: np.ndarray  # int64 (images,)

    @property
    def accuracies(self) -> list[float]:
        return [float(row.mean()) for row in self.correct]

    @property
    def accuracy(self) -> float:
        """Mean test accuracy over the rows (the seeds of a group)."""
        return float(self.correct.mean())

    @property
    def answers(self) -> np.ndarray:
        """The most common prediction per image over the rows; ties go to the smaller digit."""
        if len(self.predictions) == 1:
            return self.predictions[0]
        counts = np.apply_along_axis(np.bincount, 0, self.predictions, minlength=NUM_CLASSES)  # (10, images)
        return counts.argmax(axis=0)


def _run_label(run: dict[str, Any]) -> str:
    return f"#{run['id']} {run['name']}"


def list_subjects(store: RunStore, shipped: list[ModelEntry], *, runs: list[dict[str, Any]] | None = None) -> list[Subject]:
    """Return every comparable subject: shipped models, completed runs, seed groups, then ensembles.

    ``runs`` reuses a ``store.list_runs()`` result the caller already has.
    """
    runs = store.list_runs() if runs is None else runs
    completed = {entry.key: entry for entry in run_models(store, runs=runs)}
    subjects = [_single(entry, "shipped") for entry in shipped]
    subjects += [_single(entry, "run") for entry in completed.values()]
    subjects += _groups(runs, completed)
    by_key = {s.key: s for s in subjects if s.kind in ("shipped", "run")}
    for ensemble in store.list_ensembles():
        subject = _ensemble(ensemble, by_key)
        if subject is not None:
            subjects.append(subject)
    return subjects


def _single(entry: ModelEntry, kind: str) -> Subject:
    return Subject(key=entry.key, label=entry.label, kind=kind, arch=entry.arch, members=[entry], params=entry.params)


def seed_groups(runs: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """Return the runs of each seed group, by group id, in run order."""
    groups: dict[int, list[dict[str, Any]]] = {}
    for run in runs:
        if run.get("seed_group") is not None:
            groups.setdefault(run["seed_group"], []).append(run)
    return groups


def _groups(runs: list[dict[str, Any]], completed: dict[str, ModelEntry]) -> list[Subject]:
    subjects = []
    for group_id, members in seed_groups(runs).items():
        done = [run for run in members if f"run:{run['id']}" in completed]
        if not done:
            continue
        first = members[0]
        base = first["name"].rsplit(" seed ", 1)[0]
        seeds = [run["train_config"].get("seed") for run in done]
        pending = len(members) - len(done)
        count = f"{len(done)} seed{'' if len(done) == 1 else 's'}" + (f", {pending} not completed" if pending else "")
        subjects.append(
            Subject(
                key=f"group:{group_id}", label=f"group {group_id} {base} ({count})", kind="group", arch=first["arch"],
                members=[completed[f"run:{run['id']}"] for run in done], params=first["params"],
                info={"seeds": seeds, "pending": pending, "run_ids": [run["id"] for run in done]},
            )
        )
    return subjects


def _ensemble(ensemble: dict[str, Any], by_key: dict[str, Subject]) -> Subject | None:
    missing = [key for key in ensemble["members"] if key not in by_key]
    if missing:
        log.warning("ensemble %d: members %s are not completed models; it is left out", ensemble["id"], ", ".join(missing))
        return None
    members = [by_key[key].members[0] for key in ensemble["members"]]
    archs = sorted({m.arch for m in members})
    params = sum(m.params or 0 for m in members) or None
    return Subject(
        key=f"ensemble:{ensemble['id']}", label=f"ensemble {ensemble['id']} {ensemble['name']} ({len(members)} models)",
        kind="ensemble", arch="+".join(archs), members=members, params=params,
        info={"id": ensemble["id"], "member_keys": list(ensemble["members"])},
    )


def resolve_subjects(store: RunStore, specs: list[str], shipped: list[ModelEntry]) -> list[Subject]:
    """Map command-line names to subjects: 12 (run), g12 (seed group), e3 (ensemble), cnn (shipped) or full keys."""
    subjects = {s.key: s for s in list_subjects(store, shipped)}
    resolved = []
    for spec in specs:
        key = _subject_key(spec.strip())
        if key not in subjects:
            raise LabError(_unknown_subject_message(spec, key, store))
        resolved.append(subjects[key])
    return resolved


def _subject_key(spec: str) -> str:
    if ":" in spec:
        return spec
    if spec.isascii() and spec.isdigit():
        return f"run:{spec}"
    for prefix, kind in (("g", "group"), ("e", "ensemble")):
        rest = spec[1:]
        if spec[:1].lower() == prefix and rest.isascii() and rest.isdigit():
            return f"{kind}:{rest}"
    return f"shipped:{spec}"


def _unknown_subject_message(spec: str, key: str, store: RunStore) -> str:
    kind, _, value = key.partition(":")
    if kind == "run":
        try:
            run = store.get_run(int(value))
        except LabError:
            return f"run {value} not found in {store.root}; list the runs with: python -m core runs"
        return f"run {value} is {run['status']}; only completed runs with weights can be compared"
    if kind == "group":
        if not any(run.get("seed_group") == int(value) for run in store.list_runs()):
            return f"seed group {value} not found in {store.root}; groups are named g plus their first run id, e.g. g12 (see: python -m core runs)"
        return f"seed group {value} has no completed run yet; wait for one of its runs to complete"
    if kind == "ensemble":
        return (
            f"ensemble {value} not found in {store.root}, or one of its members is no longer a completed model; "
            "list the ensembles with: python -m core runs"
        )
    return (
        f"{spec!r} is not a run id (12), a seed group (g12), an ensemble (e3) or a shipped model name; "
        f"shipped models: {', '.join(p.stem for p in sorted(SHIPPED_DIR.glob('*.safetensors'))) or 'none'}"
    )


# -- test outputs per subject -----------------------------------------------------------------------


def stored_outputs_paths(entry: ModelEntry, store: RunStore) -> list[Path]:
    """Return the files that may contain a model's test outputs, in lookup order.

    A run's outputs are in its folder. A checkpoint file's are beside it (shipped models)
    or in the store's cache, which is where they are written when first computed.
    """
    if entry.key.startswith("run:"):
        return [store.run_dir(int(entry.key.split(":", 1)[1])) / OUTPUTS_NAME]
    paths = [shipped_outputs_path(entry.path)]
    if entry.path.is_file():  # the cache key reads the checkpoint's modification time
        paths.append(cached_outputs_path(store.root, entry.path))
    return paths


def model_outputs(entry: ModelEntry, store: RunStore, data_dir: str | os.PathLike | None = None) -> TestOutputs:
    """Return one model's stored test outputs, evaluating it once when none are stored."""
    paths = stored_outputs_paths(entry, store)
    for path in paths:
        if path.is_file():
            return load_test_outputs(path)
    if not entry.path.is_file():
        raise CheckpointError(f"checkpoint {entry.path} of {entry.label} not found, and no test outputs are stored for it")
    return evaluate_checkpoint(entry.path, data_dir, paths[-1])


def subject_outputs(subject: Subject, store: RunStore, data_dir: str | os.PathLike | None = None) -> SubjectOutputs:
    """Return the subject's test results; an ensemble's row is the argmax of its members' mean probabilities."""
    outputs = [model_outputs(member, store, data_dir) for member in subject.members]
    labels = outputs[0].labels
    for member, other in zip(subject.members[1:], outputs[1:]):
        if not np.array_equal(other.labels, labels):
            raise LabError(
                f"{member.label} was evaluated on other test images than {subject.members[0].label}; "
                "only models tested on the same test set can be combined"
            )
    probabilities = np.mean([o.probabilities for o in outputs], axis=0)
    if subject.kind == "ensemble":
        ensemble = TestOutputs.from_probabilities(probabilities, labels)
        outputs = [ensemble]
    predictions = np.stack([o.predictions for o in outputs])
    return SubjectOutputs(correct=predictions == labels, predictions=predictions, probabilities=probabilities, labels=labels)


def check_same_test_set(outputs: Mapping[str, SubjectOutputs], labels: Mapping[str, str]) -> None:
    """Raise LabError unless every subject was tested on the same images with the same labels."""
    keys = list(outputs)
    for key in keys[1:]:
        if not np.array_equal(outputs[key].labels, outputs[keys[0]].labels):
            raise LabError(
                f"{labels[key]} and {labels[keys[0]]} were tested on different test images; compare models tested on the "
                "official 10,000 test images"
            )


# -- statistics between subjects ---------------------------------------------------------------------


def compare_pair(a: Subject, b: Subject, a_outputs: SubjectOutputs, b_outputs: SubjectOutputs) -> dict[str, Any]:
    """Return McNemar's test, the bootstrap interval and a one-sentence reading of A against B."""
    test = mcnemar(a_outputs.correct, b_outputs.correct)
    difference, low, high = bootstrap_difference(a_outputs.correct, b_outputs.correct)
    seed_p = seed_t_test(a_outputs.accuracies, b_outputs.accuracies)
    result = {
        "a": a.key, "b": b.key, "a_label": a.label, "b_label": b.label,
        "accuracy_a": a_outputs.accuracy, "accuracy_b": b_outputs.accuracy,
        "difference": difference, "ci_low": low, "ci_high": high,
        "a_only": test.a_only, "b_only": test.b_only, "p_value": test.p_value, "seed_p_value": seed_p,
        "significant": test.p_value < SIGNIFICANCE_LEVEL and not low <= 0 <= high,
    }
    result["shared_models"] = sorted({m.key for m in a.members} & {m.key for m in b.members})
    result["sentence"] = describe_pair(result, paired_rows=test.pairs)
    return result


def describe_pair(pair: Mapping[str, Any], *, paired_rows: int = 1) -> str:
    """Say in one plain sentence whether A and B differ beyond chance on this test set."""
    # The interval is stated for the better one minus the worse one, so its sign matches the sentence.
    if pair["difference"] >= 0:
        better, worse, low, high = pair["a_label"], pair["b_label"], pair["ci_low"], pair["ci_high"]
    else:
        better, worse, low, high = pair["b_label"], pair["a_label"], -pair["ci_high"], -pair["ci_low"]
    points = abs(pair["difference"]) * 100
    interval = f"95% interval {low * 100:+.2f} to {high * 100:+.2f} points"
    images = f"{pair['a_only']} images only A gets right, {pair['b_only']} only B"
    if paired_rows > 1:
        images += f", summed over {paired_rows} model pairs"
    seeds = ""
    if pair.get("seed_p_value") is not None:
        seeds = "; across seeds the gap is " + ("larger" if pair["seed_p_value"] < SIGNIFICANCE_LEVEL else "not larger") + (
            f" than the seed spread (Welch p = {pair['seed_p_value']:.3g})"
        )
    shared = ""
    if pair.get("shared_models"):
        shared = f" Note that both contain {', '.join(pair['shared_models'])}, so they are not independent models."
    if pair["difference"] == 0 and pair["a_only"] == pair["b_only"]:
        return f"{pair['a_label']} and {pair['b_label']} are equally accurate on the test set ({images}){seeds}.{shared}"
    verdict = "is real" if pair["significant"] else "could be chance"
    return (
        f"{better} is {points:.2f} points more accurate than {worse} ({interval}); McNemar p = {pair['p_value']:.3g} "
        f"({images}), so at the 5% level the difference {verdict}{seeds}.{shared}"
    )


def per_class_accuracy(outputs: SubjectOutputs) -> list[float]:
    """Return the mean accuracy over rows for each digit 0-9."""
    return [float(outputs.correct[:, outputs.labels == digit].mean()) for digit in range(NUM_CLASSES)]


def confusion_matrix(outputs: SubjectOutputs) -> np.ndarray:
    """Return the (true, predicted) counts averaged over rows, as float64 (10, 10)."""
    matrix = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.float64)
    for row in outputs.predictions:
        np.add.at(matrix, (outputs.labels, row), 1.0)
    return matrix / len(outputs.predictions)


def confusion_difference(a_outputs: SubjectOutputs, b_outputs: SubjectOutputs) -> np.ndarray:
    """Return B's confusion matrix minus A's: positive off-diagonal cells are mistakes B makes more often."""
    return confusion_matrix(b_outputs) - confusion_matrix(a_outputs)


def images_only_a_gets_right(a_outputs: SubjectOutputs, b_outputs: SubjectOutputs) -> np.ndarray:
    """Return the test image indices every row of A gets right and every row of B gets wrong."""
    return np.flatnonzero(a_outputs.correct.all(axis=0) & ~b_outputs.correct.any(axis=0))


def images_all_get_wrong(outputs: list[SubjectOutputs]) -> np.ndarray:
    """Return the test image indices that every row of every subject gets wrong."""
    wrong = np.ones_like(outputs[0].labels, dtype=bool)
    for result in outputs:
        wrong &= ~result.correct.any(axis=0)
    return np.flatnonzero(wrong)


def subject_summary(subject: Subject, outputs: SubjectOutputs) -> dict[str, Any]:
    """Return a subject's test accuracy: mean, standard deviation and range over its rows, with its seeds."""
    mean, std = mean_and_std(outputs.accuracies)
    return {
        "key": subject.key, "label": subject.label, "kind": subject.kind, "arch": subject.arch, "params": subject.params,
        "test_accuracy": mean, "test_accuracy_std": std, "test_accuracy_min": min(outputs.accuracies),
        "test_accuracy_max": max(outputs.accuracies), "runs": len(outputs.accuracies), **subject.info,
    }
