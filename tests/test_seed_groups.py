"""Seed groups, ensembles and stored test outputs: the store, the compare subjects, the CLI and the Train page."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from core.compare import list_subjects, resolve_subjects, subject_outputs, subject_summary
from core.errors import LabError, StoreError
from core.inference import shipped_models
from core.predictions import OUTPUTS_NAME, load_test_outputs, save_test_outputs, shipped_outputs_path
from core.store import RunStore
from tests.helpers import SHIPPED_CNN, run_cli

ROOT = Path(__file__).resolve().parent.parent
DENSE = {"arch": "dense"}


def completed_run(store: RunStore, probabilities: np.ndarray, labels: np.ndarray, *, group_seed: int | None = None) -> int:
    """Store a completed run whose test outputs are ``probabilities``; its weights are the shipped CNN's."""
    run_id = store.create_run({"arch": "cnn"}, {"seed": group_seed or 0})
    folder = store.run_dir(run_id)
    folder.mkdir(parents=True)
    weights = folder / "model.safetensors"
    weights.write_bytes(SHIPPED_CNN.read_bytes())
    probs = torch.tensor(probabilities, dtype=torch.float32)
    save_test_outputs(folder / OUTPUTS_NAME, probs, probs.argmax(dim=1), torch.tensor(labels))
    accuracy = float((probabilities.argmax(axis=1) == labels).mean())
    store.finish(run_id, "completed", test_accuracy=accuracy, checkpoint=str(weights))
    return run_id


def one_hot(answers: list[int], confidence: float = 0.9) -> np.ndarray:
    rows = np.full((len(answers), 10), (1 - confidence) / 9, dtype=np.float32)
    rows[np.arange(len(answers)), answers] = confidence
    return rows


def test_seed_group_names_and_ids(tmp_path):
    store = RunStore(tmp_path)

    ids = store.create_seed_group(DENSE, {"epochs": 1}, [3, 4, 5], name="wide")

    runs = [store.get_run(i) for i in ids]
    assert [r["seed_group"] for r in runs] == [ids[0]] * 3
    assert [r["name"] for r in runs] == ["wide seed 3", "wide seed 4", "wide seed 5"]
    assert [r["train_config"]["seed"] for r in runs] == [3, 4, 5]
    assert {r["status"] for r in runs} == {"queued"}


def test_seed_group_default_name_and_cli_status(tmp_path):
    store = RunStore(tmp_path)

    ids = store.create_seed_group(DENSE, {}, [0, 1], status="running", source="cli", pid=123)

    assert store.get_run(ids[0])["name"] == f"dense-g{ids[0]} seed 0"
    assert [store.get_run(i)["status"] for i in ids] == ["running", "queued"]
    assert store.mark_running(ids[1], 123)["status"] == "running"
    with pytest.raises(StoreError, match="not queued"):
        store.mark_running(ids[1], 123)


@pytest.mark.parametrize("seeds, message", [([], "1 to 20"), (list(range(21)), "1 to 20"), ([1, 1], "must differ")])
def test_seed_group_rejects_bad_seeds(tmp_path, seeds, message):
    with pytest.raises(StoreError, match=message):
        RunStore(tmp_path).create_seed_group(DENSE, {}, seeds)


def test_ensemble_validation(tmp_path):
    store = RunStore(tmp_path)

    with pytest.raises(StoreError, match="2 to 20 different models"):
        store.create_ensemble(["run:1", "run:1"])
    with pytest.raises(StoreError, match="invalid ensemble member 'cnn'"):
        store.create_ensemble(["run:1", "cnn"])
    with pytest.raises(StoreError, match="invalid run id"):
        store.create_ensemble(["run:1", "run:x/.."])
    ensemble_id = store.create_ensemble(["run:1", "shipped:cnn"])
    assert store.get_ensemble(ensemble_id)["name"] == f"ensemble-{ensemble_id}"
    with pytest.raises(StoreError, match=f"ensemble {ensemble_id} .* already has exactly these members"):
        store.create_ensemble(["shipped:cnn", "run:1"])


def test_deleting_member_deletes_ensemble(tmp_path):
    store = RunStore(tmp_path)
    labels = np.array([0, 1, 2])
    first, second = completed_run(store, one_hot([0, 1, 2]), labels), completed_run(store, one_hot([0, 1, 1]), labels)
    store.create_ensemble([f"run:{first}", f"run:{second}"], name="pair")

    deleted = store.delete_run(second)

    assert deleted == ["pair"]
    assert store.list_ensembles() == []


def test_ensemble_accuracy_by_hand(tmp_path):
    store = RunStore(tmp_path)
    labels = np.array([0, 1, 2, 3])
    # Image 0: all right. Image 1: only the first is right, but confidently, so the mean picks 1.
    # Image 2: two of three right. Image 3: only the third is right, and not confidently enough.
    first = np.array(one_hot([0, 1, 5, 7]))
    first[1] = one_hot([1], 0.99)[0]
    first[2] = one_hot([5], 0.3)[0]  # a wrong but unsure prediction, outvoted by the other two
    second = one_hot([0, 4, 2, 7], 0.5)
    third = one_hot([0, 4, 2, 3], 0.4)
    ids = [completed_run(store, probs, labels) for probs in (first, second, third)]
    store.create_ensemble([f"run:{i}" for i in ids], name="three")
    expected = np.mean([first, second, third], axis=0).argmax(axis=1)

    subject = resolve_subjects(store, ["e1"], [])[0]
    outputs = subject_outputs(subject, store)

    assert expected.tolist() == [0, 1, 2, 7]
    assert outputs.predictions[0].tolist() == expected.tolist()
    assert outputs.accuracy == 0.75
    assert subject.kind == "ensemble"
    assert subject_summary(subject, outputs)["test_accuracy"] == 0.75


def test_group_subject_mean_and_std(tmp_path):
    store = RunStore(tmp_path)
    labels = np.array([0, 1, 2, 3])
    ids = store.create_seed_group({"arch": "cnn"}, {}, [0, 1, 2], name="cnn")
    for run_id, answers in zip(ids, ([0, 1, 2, 3], [0, 1, 2, 0], [0, 1, 0, 0])):
        folder = store.run_dir(run_id)
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(SHIPPED_CNN.read_bytes())
        probs = torch.tensor(one_hot(answers))
        save_test_outputs(folder / OUTPUTS_NAME, probs, probs.argmax(dim=1), torch.tensor(labels))
        store.finish(run_id, "completed", checkpoint=str(folder / "model.safetensors"))

    group = resolve_subjects(store, [f"g{ids[0]}"], [])[0]
    summary = subject_summary(group, subject_outputs(group, store))

    assert group.label == f"group {ids[0]} cnn (3 seeds)"
    assert summary["test_accuracy"] == pytest.approx(0.75)  # 1.0, 0.75 and 0.5
    assert summary["test_accuracy_std"] == pytest.approx(0.25)
    assert summary["seeds"] == [0, 1, 2]


def test_unknown_subjects_name_the_fix(tmp_path):
    store = RunStore(tmp_path)
    queued = store.create_run(DENSE, {})

    with pytest.raises(LabError, match="run 99 not found"):
        resolve_subjects(store, ["99"], [])
    with pytest.raises(LabError, match=f"run {queued} is queued; only completed runs"):
        resolve_subjects(store, [str(queued)], [])
    with pytest.raises(LabError, match="seed group 4 not found"):
        resolve_subjects(store, ["g4"], [])
    waiting = store.create_seed_group(DENSE, {}, [0, 1])[0]
    with pytest.raises(LabError, match=f"seed group {waiting} has no completed run yet"):
        resolve_subjects(store, [f"g{waiting}"], [])
    with pytest.raises(LabError, match="shipped models: capsnet, cnn"):
        resolve_subjects(store, ["resnet"], shipped_models())


def test_old_run_without_outputs_is_evaluated_once(tmp_path, data_dir):
    store = RunStore(tmp_path)
    run_id = store.create_run(DENSE, {})
    folder = store.run_dir(run_id)
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes((SHIPPED_CNN.parent / "dense.safetensors").read_bytes())
    store.finish(run_id, "completed", checkpoint=str(folder / "model.safetensors"))
    subject = next(s for s in list_subjects(store, []) if s.key == f"run:{run_id}")

    outputs = subject_outputs(subject, store, data_dir)

    assert (folder / OUTPUTS_NAME).is_file()
    assert outputs.accuracy == pytest.approx(0.9811)  # the shipped dense net's recorded test accuracy


def test_shipped_outputs_match_records():
    for model in shipped_models():
        outputs = load_test_outputs(shipped_outputs_path(model.path))

        assert len(outputs.labels) == 10000, model.key
        assert outputs.accuracy == pytest.approx(model.test_accuracy, abs=1e-6), model.key


def test_cli_trains_seed_group(tmp_path):
    result = run_cli(
        "--store", str(tmp_path), "train", "--arch", "dense", "--epochs", "1", "--train-subset", "512", "--device", "cpu",
        "--seed", "7", "--seeds", "2", "--json",
    )

    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    store = RunStore(tmp_path)
    assert output["group_name"] == "g1"
    assert [r["seed"] for r in output["runs"]] == [7, 8]
    assert output["test_accuracy_mean"] == pytest.approx(np.mean([r["test_accuracy"] for r in output["runs"]]))
    for run in output["runs"]:
        stored = load_test_outputs(store.run_dir(run["run_id"]) / OUTPUTS_NAME)
        assert stored.accuracy == run["test_accuracy"]
        assert store.get_run(run["run_id"])["seed_group"] == 1


def test_cli_seeds_rejects_export_and_bad_count(tmp_path, capsys):
    from core.cli import main

    export_code = main(["--store", str(tmp_path), "train", "--arch", "dense", "--seeds", "2", "--export", str(tmp_path / "x.safetensors")])
    export_error = capsys.readouterr().err
    count_code = main(["--store", str(tmp_path), "train", "--arch", "dense", "--seeds", "0"])
    count_error = capsys.readouterr().err

    assert export_code == 2
    assert "--export writes one model" in export_error
    assert count_code == 2
    assert "--seeds must be between 1 and 20, got 0" in count_error
    assert RunStore(tmp_path).list_runs() == []


def test_train_page_queues_seed_group(tmp_path, monkeypatch, data_dir):
    monkeypatch.setenv("MNIST_LAB_STORE", str(tmp_path))
    monkeypatch.setenv("MNIST_DATA_DIR", str(data_dir))
    monkeypatch.setenv("MNIST_LAB_NO_WORKER", "1")
    at = AppTest.from_file(str(ROOT / "app" / "views" / "train.py"), default_timeout=60).run()
    at.selectbox(key="arch").select("dense").run()

    at.number_input(key="seed_count").set_value(3).run()
    at.button(key="start").click().run()

    runs = RunStore(tmp_path).list_runs()
    assert not at.exception
    assert [r["train_config"]["seed"] for r in runs] == [0, 1, 2]
    assert {r["seed_group"] for r in runs} == {runs[0]["id"]}


def test_pair_sentence_names_shared_models(tmp_path):
    from core.compare import compare_pair

    store = RunStore(tmp_path)
    labels = np.array([0, 1, 2, 3])
    first, second = completed_run(store, one_hot([0, 1, 2, 3]), labels), completed_run(store, one_hot([0, 1, 0, 0]), labels)
    store.create_ensemble([f"run:{first}", f"run:{second}"], name="pair")
    run, ensemble = resolve_subjects(store, [str(first), "e1"], [])

    pair = compare_pair(run, ensemble, subject_outputs(run, store), subject_outputs(ensemble, store))

    assert pair["shared_models"] == [f"run:{first}"]
    assert pair["sentence"].endswith(f"Note that both contain run:{first}, so they are not independent models.")


def test_missing_checkpoint_without_outputs(tmp_path):
    from core.compare import model_outputs
    from core.errors import CheckpointError
    from core.inference import ModelEntry

    gone = ModelEntry(key="shipped:gone", label="gone", path=tmp_path / "gone.safetensors", arch="cnn", test_accuracy=None, params=None)

    with pytest.raises(CheckpointError, match="gone.safetensors of gone not found, and no test outputs are stored"):
        model_outputs(gone, RunStore(tmp_path / "store"))
