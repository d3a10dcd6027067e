"""``python -m core compare`` on a fabricated store whose statistics are known in advance.

The runs' weights are a copy of the shipped CNN, but their test outputs are
written by hand so that each run gets chosen test images wrong. McNemar's
p-value, the accuracy difference, a group's spread and the ensemble accuracy
are then computed here without the code under test.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from core.cli import main
from core.predictions import OUTPUTS_NAME, save_test_outputs
from tests.helpers import DATA_DIR, SHIPPED_CNN, run_cli

# Wrong predictions by test image index. A and B disagree on 40 images: A alone
# is right on 30 and B alone on 10. Both are wrong on 5 more.
A_ONLY = range(0, 30)
B_ONLY = range(30, 40)
BOTH_WRONG = range(40, 45)
SEED_WRONG = {1: range(100, 120), 2: range(100, 140)}  # the seed group's two runs
SCRIPT_NAME = "<script>alert(1)</script>"


def fabricated_outputs(labels: np.ndarray, wrong: list[int], confidence: float) -> tuple[torch.Tensor, ...]:
    """Return probabilities, predictions and labels of a model wrong exactly on ``wrong`` (it predicts label + 1 there)."""
    predictions = labels.copy()
    predictions[list(wrong)] = (labels[list(wrong)] + 1) % 10
    probabilities = np.full((len(labels), 10), (1 - confidence) / 9, dtype=np.float32)
    probabilities[np.arange(len(labels)), predictions] = confidence
    return torch.from_numpy(probabilities), torch.from_numpy(predictions), torch.from_numpy(labels)


def finish_run(store, run_id: int, labels: np.ndarray, wrong: list[int], confidence: float) -> None:
    """Give a stored run copied CNN weights and hand-made test outputs, and mark it completed."""
    folder = store.run_dir(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = folder / "model.safetensors"
    shutil.copyfile(SHIPPED_CNN, checkpoint)
    save_test_outputs(folder / OUTPUTS_NAME, *fabricated_outputs(labels, wrong, confidence))
    accuracy = 1 - len(wrong) / len(labels)
    for epoch in (1, 2):  # a short made-up history, so curves can be drawn
        store.add_epoch(run_id, {
            "epoch": epoch, "train_loss": 0.5 / epoch, "train_accuracy": 0.9 + epoch / 100, "val_loss": 0.6 / epoch,
            "val_accuracy": 0.88 + epoch / 100, "lr": 0.003, "images_per_s": 1000.0, "epoch_time_s": 1.0, "wall_time_s": epoch,
        })
    store.finish(run_id, "completed", checkpoint=str(checkpoint), test_accuracy=accuracy)


def fabricate_store(root: Path) -> dict:
    """Build a store with runs A and B, a seed group of two runs and an ensemble of A and B; return their CLI names."""
    from core.data import load_raw
    from core.store import RunStore

    labels = load_raw(DATA_DIR, download=False)[3].numpy()
    record = json.loads(SHIPPED_CNN.with_suffix(".json").read_text())
    model_config, train_config = record["model_config"], record["train_config"]
    params = record["params"]
    store = RunStore(root)

    a = store.create_run(model_config, train_config, name="alpha", status="running", params=params)
    finish_run(store, a, labels, [*B_ONLY, *BOTH_WRONG], confidence=0.9)
    b = store.create_run(model_config, train_config, name=SCRIPT_NAME, status="running", params=params)
    finish_run(store, b, labels, [*A_ONLY, *BOTH_WRONG], confidence=0.6)
    group = store.create_seed_group(model_config, train_config, [1, 2], name="gamma", status="running")
    for run_id, seed in zip(group, (1, 2)):
        finish_run(store, run_id, labels, list(SEED_WRONG[seed]), confidence=0.8)
    ensemble = store.create_ensemble([f"run:{a}", f"run:{b}"], name="duo")
    return {"store": store, "labels": labels, "a": str(a), "b": str(b), "group": f"g{group[0]}", "ensemble": f"e{ensemble}"}


def mcnemar_p(a_only: int, b_only: int) -> float:
    """Two-sided exact binomial p-value of a_only successes in a_only + b_only trials at p = 0.5."""
    n, k = a_only + b_only, min(a_only, b_only)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


@pytest.fixture(scope="module")
def fabricated(tmp_path_factory, data_dir) -> dict:
    return fabricate_store(tmp_path_factory.mktemp("compare") / "store")


def run_main(capsys, fabricated: dict, *args: str) -> tuple[int, str, str]:
    code = main(["--store", str(fabricated["store"].root), "--data-dir", str(DATA_DIR), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def pair_json(fabricated) -> dict:
    """``compare A B --json`` through a real ``python -m core`` process."""
    result = run_cli("--store", str(fabricated["store"].root), "compare", fabricated["a"], fabricated["b"], "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compare_json_keys(pair_json):
    assert {"runs", "pairs", "ensemble_accuracy"} <= set(pair_json)
    assert len(pair_json["runs"]) == 2
    assert len(pair_json["pairs"]) == 1
    assert {"a", "b", "p_value", "ci_low", "ci_high", "difference", "a_only", "b_only", "seed_p_value", "sentence"} <= set(
        pair_json["pairs"][0]
    )


def test_compare_json_pair_values(pair_json, fabricated):
    pair = pair_json["pairs"][0]
    count = len(fabricated["labels"])

    assert pair["a"] == f"run:{fabricated['a']}"
    assert pair["b"] == f"run:{fabricated['b']}"
    assert pair["a_only"] == len(A_ONLY)
    assert pair["b_only"] == len(B_ONLY)
    assert pair["p_value"] == pytest.approx(mcnemar_p(len(A_ONLY), len(B_ONLY)), rel=1e-9)
    assert pair["difference"] == pytest.approx((len(A_ONLY) - len(B_ONLY)) / count)
    assert pair["seed_p_value"] is None


def test_compare_interval_matches_normal_approximation(pair_json, fabricated):
    # Per image the difference is +1 on 30 images, -1 on 10 and 0 elsewhere.
    pair = pair_json["pairs"][0]
    count = len(fabricated["labels"])
    mean = (len(A_ONLY) - len(B_ONLY)) / count
    variance = (len(A_ONLY) + len(B_ONLY)) / count - mean**2
    half_width = 1.96 * math.sqrt(variance / count)

    assert pair["ci_low"] < pair["difference"] < pair["ci_high"]
    assert pair["ci_low"] == pytest.approx(mean - half_width, abs=0.0004)
    assert pair["ci_high"] == pytest.approx(mean + half_width, abs=0.0004)


def test_compare_json_ensemble_accuracy(pair_json, fabricated):
    # A is more confident (0.9 against 0.6), so the mean probabilities follow A wherever they disagree.
    count = len(fabricated["labels"])

    assert pair_json["ensemble_accuracy"] == pytest.approx(1 - (len(B_ONLY) + len(BOTH_WRONG)) / count)


def test_compare_json_sentence(pair_json):
    sentence = pair_json["pairs"][0]["sentence"]

    assert sentence.startswith("#")
    assert "0.20 points more accurate" in sentence
    assert "30 images only A gets right, 10 only B" in sentence


def test_compare_group_mean_and_std(capsys, fabricated):
    code, out, err = run_main(capsys, fabricated, "compare", fabricated["group"], fabricated["a"], "--json")
    group = json.loads(out)["runs"][0]
    count = len(fabricated["labels"])
    accuracies = [1 - len(SEED_WRONG[seed]) / count for seed in (1, 2)]

    assert code == 0, err
    assert group["kind"] == "group"
    assert group["runs"] == 2
    assert group["seeds"] == [1, 2]
    assert group["test_accuracy"] == pytest.approx(sum(accuracies) / 2)
    assert group["test_accuracy_std"] == pytest.approx(abs(accuracies[0] - accuracies[1]) / math.sqrt(2))
    assert group["test_accuracy_min"] == pytest.approx(min(accuracies))


def test_compare_text_output(capsys, fabricated):
    code, out, err = run_main(capsys, fabricated, "compare", fabricated["group"], fabricated["a"], fabricated["ensemble"])

    assert code == 0, err
    assert "99.70% ± 0.14 (2 seeds, 99.60% to 99.80%)" in out
    assert "ensemble 1 duo (2 models)" in out
    assert "McNemar p" in out
    assert out.count(" vs ") == 3
    assert "ensemble of all 4 member models" in out


def test_compare_ensemble_subject_accuracy(capsys, fabricated):
    code, out, err = run_main(capsys, fabricated, "compare", fabricated["ensemble"], fabricated["b"], "--json")
    ensemble = json.loads(out)["runs"][0]
    count = len(fabricated["labels"])

    assert code == 0, err
    assert ensemble["kind"] == "ensemble"
    assert ensemble["test_accuracy"] == pytest.approx(1 - (len(B_ONLY) + len(BOTH_WRONG)) / count)


def test_compare_one_model_exits_2(capsys, fabricated):
    code, out, err = run_main(capsys, fabricated, "compare", fabricated["a"])

    assert code == 2
    assert out == ""
    assert "compare needs at least 2 models, got 1" in err


def test_compare_unknown_run_exits_2(capsys, fabricated):
    code, _, err = run_main(capsys, fabricated, "compare", fabricated["a"], "999")

    assert code == 2
    assert "run 999 not found" in err


def test_compare_unknown_name_exits_2(capsys, fabricated):
    code, _, err = run_main(capsys, fabricated, "compare", fabricated["a"], "nosuchnet")

    assert code == 2
    assert "'nosuchnet' is not a run id" in err
    assert "cnn" in err  # the message lists the shipped models


def test_compare_same_model_twice_exits_2(capsys, fabricated):
    code, _, err = run_main(capsys, fabricated, "compare", fabricated["a"], fabricated["a"])

    assert code == 2
    assert "is given twice" in err

