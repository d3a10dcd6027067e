"""The Compare page under AppTest, on a store of fabricated runs whose test outputs are chosen by hand.

Every run gets a copy of a shipped checkpoint as its weights and a
``test_outputs.safetensors`` with known mistakes on the real test labels, so
accuracies, McNemar counts and gallery sizes are known without any training:

- run A is wrong on test images 0-99 (accuracy 0.99), run B on 50-249 (0.98);
  only A is right on 100-249 (150 images), only B on 0-49 (50), both wrong on 50-99 (50);
- a seed group of three seeds: two completed (0.97 and 0.99), one still queued;
- an ensemble of A and B: each model is confident (0.9) where it is right and unsure (0.4)
  where it is wrong, so the ensemble is wrong only where both are: accuracy 0.995.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from streamlit.testing.v1 import AppTest

from core.data import load_raw
from core.predictions import OUTPUTS_NAME, save_test_outputs
from core.store import RunStore
from tests.helpers import REPO_ROOT

PAGE = REPO_ROOT / "app" / "views" / "compare.py"
MAIN = REPO_ROOT / "app" / "main.py"
WEIGHTS = REPO_ROOT / "checkpoints" / "dense.safetensors"
EPOCH_WALL_S = (10.0, 21.0, 33.0)  # run A's wall time at the end of each epoch


@pytest.fixture(scope="module")
def test_labels(data_dir) -> np.ndarray:
    _, _, _, labels = load_raw(data_dir, download=False)
    return labels.numpy().astype(np.int64)


def wrong_on(labels: np.ndarray, start: int, stop: int, shift: int = 1) -> np.ndarray:
    predictions = labels.copy()
    predictions[start:stop] = (labels[start:stop] + shift) % 10
    return predictions


def write_outputs(path: Path, predictions: np.ndarray, labels: np.ndarray) -> None:
    """Write outputs whose top probability is 0.9 where the prediction is right and 0.4 where it is wrong."""
    top = np.where(predictions == labels, 0.9, 0.4)
    probabilities = np.repeat(((1 - top) / 9)[:, None], 10, axis=1)
    probabilities[np.arange(len(labels)), predictions] = top
    save_test_outputs(path, torch.from_numpy(probabilities), torch.from_numpy(predictions), torch.from_numpy(labels))


def complete_run(store: RunStore, run_id: int, predictions: np.ndarray, labels: np.ndarray, *, wall_s=EPOCH_WALL_S) -> None:
    folder = store.run_dir(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = folder / "model.safetensors"
    shutil.copyfile(WEIGHTS, checkpoint)
    write_outputs(folder / OUTPUTS_NAME, predictions, labels)
    for epoch, wall in enumerate(wall_s, start=1):
        store.add_epoch(
            run_id,
            {"epoch": epoch, "train_loss": 1.0 / epoch, "val_loss": 1.2 / epoch, "train_accuracy": 0.9 + epoch / 100,
             "val_accuracy": 0.88 + epoch / 100, "wall_time_s": wall},
        )
    store.add_step_points(
        run_id, [{"step": step, "epoch": step / 10, "train_loss": 2.0 / step, "wall_time_s": step} for step in range(1, 31)],
        progress=1.0,
    )
    accuracy = float((predictions == labels).mean())
    store.finish(run_id, "completed", checkpoint=str(checkpoint), test_accuracy=accuracy, confusion=[[0] * 10 for _ in range(10)])


@pytest.fixture
def compare_store(tmp_path, monkeypatch, data_dir, test_labels) -> RunStore:
    monkeypatch.setenv("MNIST_LAB_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("MNIST_DATA_DIR", str(data_dir))
    monkeypatch.setenv("MNIST_LAB_NO_WORKER", "1")
    store = RunStore(tmp_path / "store")
    model_config, train_config = {"arch": "dense"}, {"epochs": 3}

    run_a = store.create_run(model_config, train_config, name="run-a", status="running")
    run_b = store.create_run(model_config, train_config, name="run-b", status="running")
    complete_run(store, run_a, wrong_on(test_labels, 0, 100), test_labels)
    complete_run(store, run_b, wrong_on(test_labels, 50, 250, shift=2), test_labels)

    seeds = store.create_seed_group(model_config, train_config, [1, 2, 3], name="trio")
    complete_run(store, seeds[0], wrong_on(test_labels, 0, 300), test_labels)
    complete_run(store, seeds[1], wrong_on(test_labels, 0, 100), test_labels)

    store.create_ensemble([f"run:{run_a}", f"run:{run_b}"], name="a-plus-b")
    return store


def open_page(**state) -> AppTest:
    at = AppTest.from_file(str(PAGE), default_timeout=60)
    for key, value in state.items():
        at.session_state[key] = value
    return at.run()


def table(at: AppTest):
    return at.dataframe[0]


def select_rows(at: AppTest, *names: str) -> AppTest:
    """Select table rows by name through the table's selection state, as a click would."""
    frame = table(at).value
    positions = [int(np.flatnonzero(frame["name"] == name)[0]) for name in names]
    at.session_state[table(at).key] = {"selection": {"rows": positions, "columns": [], "cells": []}}
    return at.run()


def row_of(at: AppTest, name_start: str) -> dict:
    frame = table(at).value
    matches = frame[frame["name"].str.startswith(name_start)]
    assert len(matches) == 1, f"expected one row starting with {name_start!r}, got {list(frame['name'])}"
    return matches.iloc[0].to_dict()


def chart_spec(at: AppTest, key: str) -> dict:
    for chart in at.get("plotly_chart"):
        if chart.proto.id and key in chart.proto.id:
            return json.loads(chart.proto.spec)
    raise AssertionError(f"no plotly chart with key {key!r}")


def markdown_text(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


def test_group_row_mean_and_std(compare_store):
    at = open_page()

    assert not at.exception
    row = row_of(at, "group 3 trio")
    assert row["test_accuracy"] == pytest.approx(0.98)
    assert row["test_accuracy_std"] == pytest.approx(np.std([0.97, 0.99], ddof=1))
    assert row["seeds"] == 2
    assert row["pending_seeds"] == 1
    assert row["status"] == "seed group"


def test_ensemble_row_accuracy(compare_store):
    at = open_page()

    row = row_of(at, "ensemble 1 a-plus-b")
    assert row["test_accuracy"] == pytest.approx(0.995)
    assert row["status"] == "ensemble of 2"


def test_pair_sentence_and_counts(compare_store):
    at = select_rows(open_page(), "#1 run-a", "#2 run-b")

    assert not at.exception
    p_value = stats.binomtest(150, 200, 0.5).pvalue
    sentences = [s.value for s in at.success]
    assert len(sentences) == 1, [i.value for i in at.info]
    assert "#1 run\\-a is 1\\.00 points more accurate than \\#2 run\\-b" in sentences[0]
    assert f"McNemar p = {p_value:.3g}".replace(".", "\\.").replace("-", "\\-") in sentences[0]
    assert "150 images only A gets right, 50 only B" in sentences[0]
    assert {m.label: m.value for m in at.metric}["McNemar p"] == f"{p_value:.3g}"
    assert {m.label: m.value for m in at.metric}["Welch seed p"] == "n/a"


def test_gallery_counts(compare_store):
    at = select_rows(open_page(), "#1 run-a", "#2 run-b")

    text = markdown_text(at)
    assert "**A right, B wrong: 150 test images** (first 24 shown)" in text
    assert "**B right, A wrong: 50 test images** (first 24 shown)" in text
    assert "**Wrong for both: 50 test images** (first 24 shown)" in text
    galleries = at.image
    assert [len(gallery.value) for gallery in galleries] == [24, 24, 24]


def test_gallery_captions_answers(compare_store, test_labels):
    at = select_rows(open_page(), "#1 run-a", "#2 run-b")

    first = at.image[0].captions[0]  # image 100: A is right, B predicts label + 2
    label = test_labels[100]
    assert first == f"true {label} | A{label} B{(label + 2) % 10}"


def test_group_pair_has_seed_p(compare_store):
    at = select_rows(open_page(), "#1 run-a", "group 3 trio (2 seeds, 1 not completed)")

    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["A accuracy"] == "99.00%"
    assert metrics["B accuracy"] == "98.00%"
    assert metrics["Welch seed p"] == "n/a"  # run A is one seed, so there is no seed spread to test against


def test_one_subject_asks_for_two(compare_store):
    at = select_rows(open_page(), "#1 run-a")

    assert not at.exception
    assert any("Select two models" in i.value for i in at.info)
    assert not at.success
    assert not [m for m in at.metric if m.label == "McNemar p"]


def test_nothing_selected_prompts(compare_store):
    at = open_page()

    assert any("Select rows in the table" in i.value for i in at.info)
    assert not [c for c in at.get("plotly_chart") if c.proto.id and "compare_loss" in c.proto.id]


def test_broken_outputs_shown_rest_kept(compare_store):
    (compare_store.run_dir(2) / OUTPUTS_NAME).write_bytes(b"not a safetensors file")
    at = select_rows(open_page(), "#1 run-a", "#2 run-b", "group 3 trio (2 seeds, 1 not completed)")

    assert not at.exception
    errors = [e.value for e in at.error]
    assert any("run\\-b" in e and "not readable" in e for e in errors)
    assert not any("trio" in e for e in errors)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["A accuracy"] == "99.00%"
    assert at.selectbox(key="pair_b").value == "group:3"  # the broken run is left out, so B is the next subject
    assert metrics["B accuracy"] == "98.00%"


def test_pending_group_row_and_note(compare_store):
    compare_store.create_seed_group({"arch": "dense"}, {"epochs": 3}, [7, 8], name="queued pair")
    at = select_rows(open_page(), "group 6 queued pair (no seed completed yet)", "#1 run-a")

    assert not at.exception
    row = row_of(at, "group 6 queued pair")
    assert row["seeds"] == 0
    assert row["pending_seeds"] == 2
    assert np.isnan(row["test_accuracy"])
    captions = "\n".join(c.value for c in at.caption)
    assert "has no completed seed yet" in captions
    assert "No test outputs yet for group 6 queued pair" in captions
    assert any("Select two models" in i.value for i in at.info)


def test_pair_choice_follows_selection(compare_store):
    at = select_rows(open_page(), "#1 run-a", "#2 run-b")
    at.selectbox(key="pair_a").set_value("run:2").run()
    at.selectbox(key="pair_b").set_value("run:1").run()
    assert {m.label: m.value for m in at.metric}["A accuracy"] == "98.00%"

    at = select_rows(at, "#1 run-a", "ensemble 1 a-plus-b (2 models)")

    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert {metrics["A accuracy"], metrics["B accuracy"]} == {"99.00%", "99.50%"}


def test_curve_options_change_figure(compare_store):
    at = select_rows(open_page(), "#1 run-a")
    spec = chart_spec(at, "compare_accuracy")
    assert spec["layout"]["xaxis"].get("type") != "log"

    at.toggle(key="curves_log_x").set_value(True).run()
    at.toggle(key="curves_log_y").set_value(True).run()
    at.radio(key="curves_x_axis").set_value("wall_time_s").run()

    spec = chart_spec(at, "compare_accuracy")
    assert spec["layout"]["xaxis"]["type"] == "log"
    assert spec["layout"]["yaxis"]["type"] == "log"
    assert spec["layout"]["xaxis"]["title"]["text"] == "wall time (s)"
    smoothed = [trace for trace in spec["data"] if trace.get("showlegend") is not False]
    assert smoothed[0]["x"] == list(EPOCH_WALL_S)


def test_smoothing_keeps_raw_faint(compare_store):
    at = select_rows(open_page(), "#1 run-a")
    at.slider(key="curves_smoothing").set_value(0.5).run()

    traces = chart_spec(at, "compare_accuracy")["data"]
    raw = [t for t in traces if t.get("showlegend") is False]
    smoothed = [t for t in traces if t.get("showlegend") is not False]
    assert raw[0]["opacity"] == 0.25
    assert raw[0]["y"] == pytest.approx([0.91, 0.92, 0.93])
    # Debiased EMA with weight 0.5: 0.91, then (0.25 * 0.91 + 0.5 * 0.92) / 0.75, ...
    assert smoothed[0]["y"][1] == pytest.approx((0.5 * 0.5 * 0.91 + 0.5 * 0.92) / 0.75)


def test_group_curve_has_band(compare_store):
    at = select_rows(open_page(), "group 3 trio (2 seeds, 1 not completed)")
    at.radio(key="curves_band").set_value("std").run()

    names = [trace.get("name", "") for trace in chart_spec(at, "compare_loss")["data"]]
    assert any("mean ± std over 2 seeds" in name for name in names)
    assert any("mean of 2 seeds" in name for name in names)


def test_summary_table_values(compare_store):
    at = select_rows(open_page(), "#1 run-a")

    summaries = [frame.value for frame in at.dataframe[1:]]
    losses = summaries[0].set_index("metric")
    assert losses.loc["validation loss", "best"] == pytest.approx(0.4)
    assert losses.loc["validation loss", "best_epoch"] == 3
    assert losses.loc["validation loss", "max"] == pytest.approx(1.2)
    accuracies = summaries[1].set_index("metric")
    assert accuracies.loc["train accuracy", "last"] == pytest.approx(0.93)


def test_presentation_hides_editing(compare_store):
    normal = open_page()
    assert {"Delete a run", "Create an ensemble", "Delete an ensemble"} <= {e.label for e in normal.expander}

    at = open_page(presentation_mode=True)

    assert not at.exception
    assert at.expander == [] or not {e.label for e in at.expander} & {"Delete a run", "Create an ensemble", "Delete an ensemble"}
    assert len(table(at).value) == len(table(normal).value)


def test_presentation_from_query(compare_store):
    at = AppTest.from_file(str(PAGE), default_timeout=60)
    at.query_params["present"] = "1"
    at.run()

    assert not {e.label for e in at.expander} & {"Delete a run", "Create an ensemble"}


def submit_ensemble(at: AppTest, members: list[str], name: str = "") -> AppTest:
    at.multiselect(key="ensemble_members").set_value(members)
    at.text_input(key="ensemble_name").set_value(name)
    at.form_submit_button[0].click()
    return at.run()


def test_ensemble_needs_two_members(compare_store):
    at = submit_ensemble(open_page(), ["run:1"])

    assert not at.exception
    assert any("at least 2 different models, got 1" in e.value for e in at.error)
    assert len(compare_store.list_ensembles()) == 1


def test_ensemble_created_from_group(compare_store):
    at = submit_ensemble(open_page(), ["group:3"], name="trio vote")

    assert not at.exception
    created = compare_store.list_ensembles()[-1]
    assert created["name"] == "trio vote"
    assert created["members"] == ["run:3", "run:4"]
    assert any("created from 2 models" in s.value for s in at.success)
    # Both seeds are wrong on 0-99, seed 1 also on 100-299 where seed 2 is confidently right.
    assert row_of(at, f"ensemble {created['id']} trio vote")["test_accuracy"] == pytest.approx(0.99)


def test_delete_run_reports_ensembles(compare_store):
    at = open_page()
    at.selectbox(key="delete_run_id").set_value(1)
    at.checkbox(key="confirm_delete_0").check().run()
    at.button(key="delete_run_0").click().run()

    assert not at.exception
    assert any("Run 1 deleted. Ensembles deleted with it: a-plus-b." in s.value for s in at.success)
    assert compare_store.list_ensembles() == []


EDITING_EXPANDERS = {"Delete a run", "Create an ensemble", "Delete an ensemble"}


def open_main(query: dict[str, str] | None = None) -> AppTest:
    at = AppTest.from_file(str(MAIN), default_timeout=60)
    for name, value in (query or {}).items():
        at.query_params[name] = value
    return at.run()


def test_main_present_query_opens_compare(compare_store):
    at = open_main({"present": "1"})

    assert not at.exception
    assert at.title[0].value == "Compare"  # the Train page is not listed, so Compare is the first page
    assert at.toggle(key="presentation_mode").value is True
    assert not {e.label for e in at.expander} & EDITING_EXPANDERS
    assert any("html { font-size: 21px; }" in block.value for block in at.get("html"))


def test_main_toggle_syncs_query(compare_store):
    at = open_main()
    assert at.title[0].value == "Train"

    at.toggle(key="presentation_mode").set_value(True).run()
    assert at.query_params.get("present") == "1"
    assert at.title[0].value == "Compare"

    at.toggle(key="presentation_mode").set_value(False).run()
    assert "present" not in at.query_params
    assert EDITING_EXPANDERS <= {e.label for e in at.expander}
    assert not at.get("html")


def test_main_bad_present_value_warns(compare_store):
    at = open_main({"present": "maybe"})

    assert not at.exception
    assert any("present=maybe is not a valid switch" in w.value for w in at.sidebar.warning)
    assert at.title[0].value == "Train"
