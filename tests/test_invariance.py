"""Invariance lab: transforms, accuracy curves, their cache, the summary sentence and the CLI command.

Exact curves come from hand-built models that read one pixel. Real curves come
from the shipped dense model, which has no built-in tolerance to shifts, on a few
hundred test images.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from core.compare import Subject
from core.data import MEAN, STD
from core.errors import ConfigError
from core.inference import SHIPPED_DIR, ModelEntry, load_cached
from core.invariance import (
    Curve, InvarianceResult, InvarianceSettings, cache_path, cached_result, describe_invariance, measure_models,
    measure_subject, prediction_sweeps, shift_images, subject_probabilities, tolerance, transform_images, transformed_digit,
)
from core.store import RunStore

DENSE = SHIPPED_DIR / "dense.safetensors"


class PixelModel(nn.Module):
    """Predict ``digit`` when the pixel at (row, column) has ink, else ``fallback``.

    ``strength`` is the logit margin, so a weak model can be outvoted in an ensemble.
    """

    def __init__(self, row: int, column: int, *, digit: int = 1, fallback: int = 0, strength: float = 20.0) -> None:
        super().__init__()
        self.row, self.column, self.digit, self.fallback, self.strength = row, column, digit, fallback, strength

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ink = x[:, 0, self.row, self.column] * STD + MEAN  # back to [0, 1]
        logits = torch.zeros(len(x), 10)
        logits[:, self.digit] = self.strength * (ink - 0.5)
        logits[:, self.fallback] = -self.strength * (ink - 0.5)
        return logits


class ConstantModel(nn.Module):
    """Lean slightly towards ``digit`` whatever the input."""

    def __init__(self, digit: int, margin: float = 0.5) -> None:
        super().__init__()
        self.digit, self.margin = digit, margin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(x), 10)
        logits[:, self.digit] = self.margin
        return logits


def dot_images(count: int, row: int = 14, column: int = 14) -> torch.Tensor:
    """``count`` uint8 images (count, 28, 28) with one full-ink pixel at (row, column)."""
    images = torch.zeros(count, 28, 28, dtype=torch.uint8)
    images[:, row, column] = 255
    return images


def one_hot(values: list[int], hot: int) -> list[float]:
    return [1.0 if value == hot else 0.0 for value in values]


SMALL = InvarianceSettings(images=8)


# -- transforms --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dx, dy, expected", [(3, 0, (10, 15)), (-3, 0, (10, 9)), (0, 2, (12, 12)), (0, -2, (8, 12)), (-1, 4, (14, 11))])
def test_shift_moves_pixel_exactly(dx, dy, expected):
    image = torch.zeros(28, 28)
    image[10, 12] = 1.0

    shifted = shift_images(image, dx, dy)

    assert shifted[expected].item() == 1.0
    assert shifted.sum().item() == 1.0


def test_shift_fills_with_zeros():
    image = torch.ones(1, 1, 28, 28)

    shifted = shift_images(image, 2, -3)

    assert shifted[..., :, :2].abs().sum().item() == 0  # the two left columns are new
    assert shifted[..., -3:, :].abs().sum().item() == 0  # the three bottom rows are new
    assert shifted.sum().item() == (28 - 2) * (28 - 3)


def test_shift_past_frame_is_blank():
    assert shift_images(torch.ones(28, 28), 28, 0).sum().item() == 0


def test_rotation_zero_is_identity(mnist):
    images = mnist.test_images[:50].unsqueeze(1).float() / 255

    assert torch.equal(transform_images(images, angle_deg=0), images)


def test_rotation_positive_turns_counter_clockwise():
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, 3:10, 13:15] = 1.0  # a vertical bar above the centre

    turned = transform_images(image, angle_deg=90)[0, 0]

    rows, columns = torch.nonzero(turned > 0.5, as_tuple=True)
    assert columns.float().mean() < 11  # counter-clockwise takes the top to the left
    assert 12 <= rows.float().mean() <= 15
    assert rows.max() - rows.min() <= 2  # the bar now lies horizontally


# -- curves ------------------------------------------------------------------------------------------


def test_pixel_model_curve_exact():
    images, labels = dot_images(8), torch.ones(8, dtype=torch.int64)
    reads_right = PixelModel(14, 17)  # 3 px right of the dot
    reads_above = PixelModel(12, 14)  # 2 px above the dot

    right_curves, rows = measure_models([reads_right], images, labels, SMALL)
    above_curves, _ = measure_models([reads_above], images, labels, SMALL)

    assert rows == 1
    assert right_curves["x_shift"].accuracy == one_hot(right_curves["x_shift"].values, 3)
    assert right_curves["y_shift"].accuracy == [0.0] * 13
    assert above_curves["y_shift"].accuracy == one_hot(above_curves["y_shift"].values, -2)
    assert above_curves["x_shift"].accuracy == [0.0] * 13
    assert right_curves["rotation"].accuracy == [0.0] * 19  # a dot at the centre stays near it when turned


def test_group_rows_give_band():
    images, labels = dot_images(8), torch.ones(8, dtype=torch.int64)

    curves, rows = measure_models([PixelModel(14, 17), PixelModel(12, 14)], images, labels, SMALL)

    x_curve = curves["x_shift"]
    assert rows == 2
    assert x_curve.accuracy_at(3) == 0.5
    assert x_curve.low[x_curve.values.index(3)] == 0.0
    assert x_curve.high[x_curve.values.index(3)] == 1.0


def test_ensemble_averages_probabilities():
    images, labels = dot_images(8), torch.ones(8, dtype=torch.int64)
    models = [PixelModel(14, 17), ConstantModel(2)]  # a confident expert and a weak, always wrong model

    curves, rows = measure_models(models, images, labels, SMALL, ensemble=True)

    assert rows == 1
    assert curves["x_shift"].accuracy == one_hot(curves["x_shift"].values, 3)


def test_dense_loses_accuracy_when_shifted(mnist):
    images, labels = mnist.test_images[:300], mnist.test_labels[:300]

    curves, _ = measure_models([load_cached(DENSE).model], images, labels, InvarianceSettings(images=300))

    for axis in ("x_shift", "y_shift"):
        curve = curves[axis]
        centre = curve.accuracy_at(0)
        assert centre > 0.9, axis
        assert curve.values[int(np.argmax(curve.accuracy))] == 0, axis
        assert curve.accuracy_at(6) < centre - 0.4, axis
        assert curve.accuracy_at(-6) < centre - 0.4, axis
    assert curves["rotation"].accuracy_at(45) < curves["rotation"].accuracy_at(0) - 0.2


def test_progress_reaches_one():
    images, labels = dot_images(4), torch.ones(4, dtype=torch.int64)
    reports = []

    measure_models([PixelModel(14, 17)], images, labels, SMALL, label="pixel", on_progress=lambda f, m: reports.append((f, m)))

    fractions = [fraction for fraction, _ in reports]
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0
    assert len(reports) == 13 + 12 + 18  # the untransformed point is measured once
    assert all(message.startswith("pixel: ") for _, message in reports)


# -- settings ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, message",
    [
        (InvarianceSettings(images=0), "test image count 0 is outside 1..10,000"),
        (InvarianceSettings(images=10001), "test image count 10,001 is outside 1..10,000"),
        (InvarianceSettings(max_shift_px=15), "largest shift 15 px is outside 1..14 px"),
        (InvarianceSettings(max_angle_deg=0), "largest angle 0° is outside 1..180°"),
        (InvarianceSettings(angle_step_deg=50), "angle step 50° is outside 1..45°"),
        (InvarianceSettings(images=2.5), "invariance setting images must be a whole number, got 2.5"),
    ],
)
def test_invalid_settings_rejected(settings, message):
    with pytest.raises(ConfigError) as error:
        settings.validate()

    assert message in str(error.value)


def test_axis_values_symmetric():
    values = InvarianceSettings(max_shift_px=2, max_angle_deg=10, angle_step_deg=5).axis_values()

    assert values["x_shift"] == [-2, -1, 0, 1, 2]
    assert values["y_shift"] == [-2, -1, 0, 1, 2]
    assert values["rotation"] == [-10, -5, 0, 5, 10]


# -- cache -------------------------------------------------------------------------------------------


@pytest.fixture
def copied_subject(tmp_path) -> Subject:
    """The shipped dense model copied into tmp_path, as a run subject whose file the test may touch."""
    path = tmp_path / "dense.safetensors"
    shutil.copy(DENSE, path)
    entry = ModelEntry(key="run:1", label="#1 dense copy", path=path, arch="dense", test_accuracy=None, params=None)
    return Subject(key="run:1", label="#1 dense copy", kind="run", arch="dense", members=[entry], params=None)


def test_measure_subject_cached(tmp_path, copied_subject, monkeypatch, data_dir):
    store = RunStore(tmp_path / "store")
    settings = InvarianceSettings(images=100)

    first = measure_subject(copied_subject, store, settings, data_dir=data_dir)
    assert cache_path(copied_subject, store, settings).is_file()

    def fail(*args, **kwargs):
        raise AssertionError("measure_models ran although the curves are cached")

    monkeypatch.setattr("core.invariance.measure_models", fail)
    second = measure_subject(copied_subject, store, settings, data_dir=data_dir)
    assert second.to_dict() == first.to_dict()
    assert cached_result(copied_subject, store, InvarianceSettings(images=101)) is None


def test_cache_key_follows_checkpoint(tmp_path, copied_subject):
    store = RunStore(tmp_path / "store")
    settings = InvarianceSettings(images=100)
    before = cache_path(copied_subject, store, settings)

    path = copied_subject.members[0].path
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))

    assert cache_path(copied_subject, store, settings) != before


def test_cache_corrupt_file_ignored(tmp_path, copied_subject):
    store = RunStore(tmp_path / "store")
    settings = InvarianceSettings(images=100)
    path = cache_path(copied_subject, store, settings)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")

    assert cached_result(copied_subject, store, settings) is None


def test_cache_uses_current_label(tmp_path, copied_subject, data_dir):
    store = RunStore(tmp_path / "store")
    settings = InvarianceSettings(images=50)
    measure_subject(copied_subject, store, settings, data_dir=data_dir)

    copied_subject.label = "#1 renamed"

    assert cached_result(copied_subject, store, settings).label == "#1 renamed"


# -- summary -----------------------------------------------------------------------------------------


def fabricated_result(x_accuracy: list[float], y_accuracy: list[float], rotation_accuracy: list[float]) -> InvarianceResult:
    settings = InvarianceSettings(images=100, max_shift_px=3, max_angle_deg=10, angle_step_deg=5)
    values = settings.axis_values()
    curves = {
        axis: Curve(axis=axis, values=values[axis], accuracy=accuracy, low=accuracy, high=accuracy)
        for axis, accuracy in (("x_shift", x_accuracy), ("y_shift", y_accuracy), ("rotation", rotation_accuracy))
    }
    return InvarianceResult(key="run:7", label="cnn 1x7", kind="run", rows=1, settings=settings, curves=curves)


def test_summary_states_axis_difference():
    result = fabricated_result(
        [0.97, 0.98, 0.99, 1.0, 0.99, 0.98, 0.97],  # stays at 95% or more up to ±3 px along x
        [0.50, 0.80, 0.96, 1.0, 0.97, 0.70, 0.40],  # stays at 95% or more up to ±1 px along y
        [0.90, 0.99, 1.0, 0.99, 0.80],
    )

    sentence = describe_invariance(result)

    assert sentence.startswith("cnn 1x7 keeps at least 95% of its 100.0% accuracy")
    assert "up to ±3 px (the whole range tested) along x but only up to ±1 px along y" in sentence
    assert "up to ±5° of rotation" in sentence
    assert "its lowest accuracy is 97.0% along x, 40.0% along y and 80.0% under rotation" in sentence


def test_summary_no_tolerance():
    result = fabricated_result([0.1, 0.2, 0.3, 0.9, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.9, 0.3, 0.2, 0.1], [0.1, 0.2, 0.9, 0.2, 0.1])

    sentence = describe_invariance(result)

    assert "not even ±1 px along x or y" in sentence
    assert "not even ±5° of rotation" in sentence


def test_tolerance_needs_both_sides():
    curve = Curve(axis="x_shift", values=[-2, -1, 0, 1, 2], accuracy=[1.0, 0.5, 1.0, 1.0, 1.0], low=[], high=[])

    assert tolerance(curve, 0.9) == 0


# -- single digits (Draw page) -----------------------------------------------------------------------


def test_sweeps_follow_shift(tmp_path):
    image = np.zeros((28, 28), dtype=np.float32)
    image[14, 14] = 1.0
    entry = ModelEntry(key="shipped:dense", label="dense", path=DENSE, arch="dense", test_accuracy=None, params=None)
    subject = Subject(key="shipped:dense", label="dense", kind="shipped", arch="dense", members=[entry], params=None)

    sweeps = prediction_sweeps(subject, image, dx=2, settings=InvarianceSettings(max_shift_px=3, max_angle_deg=10, angle_step_deg=5))
    _, shifted = transformed_digit(image, dx=2)
    direct = subject_probabilities(subject, shifted)[0]

    assert sweeps["x_shift"]["values"] == [-3, -2, -1, 0, 1, 2, 3]
    assert sweeps["y_shift"]["digits"][3] == int(direct.argmax())  # y = 0 with x = +2 is the current setting
    assert sweeps["y_shift"]["confidences"][3] == pytest.approx(float(direct.max()), abs=1e-6)
    assert len(sweeps["rotation"]["digits"]) == 5


def test_ensemble_probabilities_are_member_mean():
    entries = [
        ModelEntry(key=f"shipped:{name}", label=name, path=SHIPPED_DIR / f"{name}.safetensors", arch=name, test_accuracy=None, params=None)
        for name in ("dense", "cnn")
    ]
    ensemble = Subject(key="ensemble:1", label="pair", kind="ensemble", arch="cnn+dense", members=entries, params=None)
    singles = [Subject(key=e.key, label=e.label, kind="shipped", arch=e.arch, members=[e], params=None) for e in entries]
    inputs = torch.randn(3, 1, 28, 28)

    mean = subject_probabilities(ensemble, inputs)

    expected = (subject_probabilities(singles[0], inputs) + subject_probabilities(singles[1], inputs)) / 2
    assert torch.allclose(mean, expected, atol=1e-6)
    assert torch.allclose(mean.sum(dim=1), torch.ones(3), atol=1e-5)


# -- command line ------------------------------------------------------------------------------------
# These call core.cli.main, the function behind ``python -m core``, in this process, because
# starting a Python process with torch costs seconds on a small machine.


@pytest.fixture(scope="module")
def cli_store(tmp_path_factory):
    return tmp_path_factory.mktemp("invariance-store")


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    from core.cli import main

    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_json_curves(cli_store, capsys):
    code, out, err = run_main(capsys, "invariance", "cnn", "--json", "--images", "200", "--store", str(cli_store))

    assert code == 0, err
    data = json.loads(out)
    assert data["settings"] == {"images": 200, "max_shift_px": 6, "max_angle_deg": 45, "angle_step_deg": 5}
    (subject,) = data["subjects"]
    assert subject["key"] == "shipped:cnn"
    assert set(subject["curves"]) == {"x_shift", "y_shift", "rotation"}
    for curve in subject["curves"].values():
        assert set(curve) == {"axis", "values", "accuracy", "low", "high"}
        assert len(curve["accuracy"]) == len(curve["values"])
        assert all(0.0 <= a <= 1.0 for a in curve["accuracy"])
    assert subject["curves"]["x_shift"]["values"] == list(range(-6, 7))
    assert subject["curves"]["rotation"]["values"] == list(range(-45, 46, 5))
    assert subject["summary"].startswith("cnn (shipped) keeps at least 95%")
    assert list(cli_store.glob("cache/invariance/*.json"))


def test_cli_text_table_from_cache(cli_store, capsys):
    run_main(capsys, "invariance", "cnn", "--images", "200", "--store", str(cli_store))  # cached by the test above, or now

    code, out, _ = run_main(capsys, "invariance", "cnn", "--images", "200", "--store", str(cli_store))

    lines = out.splitlines()
    assert code == 0
    assert lines[0].startswith("test accuracy on the first 200 test images")
    assert "x shift (px)" in lines[2]
    assert "cnn (shipped)" in lines[2]
    assert [line.split()[0] for line in lines[3:16]] == [f"{v:+d}" for v in range(-6, 7)]
    assert lines[-1].startswith("cnn (shipped) keeps at least 95%")


def test_cli_unknown_run_exits_2(cli_store, capsys):
    code, out, err = run_main(capsys, "invariance", "999", "--store", str(cli_store))

    assert code == 2
    assert out == ""
    assert err.strip().splitlines() == [f"error: run 999 not found in {cli_store}; list the runs with: python -m core runs"]


@pytest.mark.parametrize(
    "option, message",
    [
        (["--images", "0"], "error: test image count 0 is outside 1..10,000"),
        (["--images", "20000"], "error: test image count 20,000 is outside 1..10,000"),
        (["--max-shift", "30"], "error: largest shift 30 px is outside 1..14 px"),
    ],
)
def test_cli_bad_option_exits_2(cli_store, capsys, option, message):
    code, _, err = run_main(capsys, "invariance", "cnn", *option, "--store", str(cli_store))

    assert code == 2
    assert err.startswith(message)


def test_cli_running_run_rejected(cli_store, capsys):
    run_id = RunStore(cli_store).create_run({"arch": "dense"}, {"epochs": 1}, name="busy", status="running")

    code, _, err = run_main(capsys, "invariance", str(run_id), "--store", str(cli_store))

    assert code == 2
    assert err.strip() == f"error: run {run_id} is running; only completed runs with weights can be compared"


# -- Compare page section under AppTest --------------------------------------------------------------


def invariance_section():
    """A page that shows the section for the subjects whose keys are in $INVARIANCE_KEYS."""
    import os

    from app.invariance_view import render_invariance
    from core.compare import list_subjects
    from core.inference import shipped_models
    from core.store import RunStore

    store = RunStore(os.environ["MNIST_LAB_STORE"])
    keys = os.environ["INVARIANCE_KEYS"].split(",")
    subjects = [s for s in list_subjects(store, shipped_models()) if s.key in keys]
    render_invariance(store, subjects)


@pytest.fixture
def section_store(tmp_path, monkeypatch) -> RunStore:
    """A store with seed group g1: the shipped dense model and an untrained dense net as its two seeds."""
    from core.checkpoints import save_checkpoint
    from core.models import build_model, default_model_config

    monkeypatch.setenv("MNIST_LAB_STORE", str(tmp_path / "store"))
    store = RunStore(tmp_path / "store")
    config = default_model_config("dense")
    run_ids = store.create_seed_group(config, {"epochs": 1, "seed": 0}, [0, 1], name="dense")
    store.run_dir(run_ids[0]).mkdir(parents=True, exist_ok=True)
    shutil.copy(DENSE, store.run_dir(run_ids[0]) / "model.safetensors")
    torch.manual_seed(0)
    save_checkpoint(store.run_dir(run_ids[1]) / "model.safetensors", build_model(config), config, {})
    for run_id in run_ids:
        store.finish(run_id, "completed", checkpoint=str(store.run_dir(run_id) / "model.safetensors"), test_accuracy=0.5, params=1)
    monkeypatch.setenv("INVARIANCE_KEYS", f"shipped:dense,group:{run_ids[0]}")
    return store


def section_charts(at) -> dict[str, dict]:
    return {chart.proto.id.rsplit("-", 1)[-1]: json.loads(chart.proto.spec) for chart in at.get("plotly_chart")}


def test_section_computes_then_caches(section_store):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_function(invariance_section, default_timeout=60).run()
    assert not section_charts(at)
    assert "Not measured yet on 2,000 test images: dense (shipped), group 1 dense (2 seeds)." in at.caption[0].value.replace("\\", "")

    at.number_input(key="invariance_images").set_value(200).run()
    at.button(key="invariance_compute").click().run()

    assert not at.exception, [e.value for e in at.exception]
    assert not any("Not measured yet" in caption.value for caption in at.caption)
    assert not at.button
    charts = section_charts(at)
    assert set(charts) == {"invariance_x_shift", "invariance_y_shift", "invariance_rotation"}
    traces = charts["invariance_x_shift"]["data"]
    assert [trace.get("fill") for trace in traces] == [None, "toself", None]  # the group's band sits under its line
    sentences = [m.value.replace("\\", "") for m in at.markdown]
    assert sentences[0].startswith("- dense (shipped) keeps at least 95%")
    assert sentences[1].startswith("- group 1 dense (2 seeds) keeps at least 95%")

    again = AppTest.from_function(invariance_section, default_timeout=60)
    again.session_state["invariance_images"] = 200
    again.run()
    assert set(section_charts(again)) == set(charts)  # read from the cache, without the button
    assert not again.button


def test_section_without_subjects(monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("MNIST_LAB_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("INVARIANCE_KEYS", "")

    at = AppTest.from_function(invariance_section, default_timeout=60).run()

    assert at.info[0].value.startswith("Select models, seed groups or ensembles")
    assert not at.number_input
