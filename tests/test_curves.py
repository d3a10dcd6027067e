"""core.curves: TensorBoard-style smoothing, seed-group means and bands, and the per-metric summary."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.curves import (
    STEP_LOSS, CurveSource, RunHistory, build_curve, metric_points, resample, smooth_ema, subject_tags, summary_rows, table_key,
)


def epochs_of(values: dict[str, list[float]], wall_s: list[float] | None = None) -> list[dict]:
    count = len(next(iter(values.values())))
    return [
        {"epoch": i + 1, **{name: series[i] for name, series in values.items()}, "wall_time_s": wall_s[i] if wall_s else None}
        for i in range(count)
    ]


def test_ema_hand_computed():
    # weight 0.5: running average 0.5, 1.25, 2.125; divided by 1 - 0.5**n = 0.5, 0.75, 0.875.
    assert smooth_ema([1.0, 2.0, 3.0], 0.5) == pytest.approx([1.0, 1.25 / 0.75, 2.125 / 0.875])


def test_ema_zero_weight_is_identity():
    assert smooth_ema([3.0, 1.0, 2.0], 0.0).tolist() == [3.0, 1.0, 2.0]


def test_ema_constant_series_unchanged():
    assert smooth_ema([0.7] * 5, 0.9).tolist() == [0.7] * 5


def test_ema_skips_non_finite():
    smoothed = smooth_ema([1.0, math.nan, 3.0], 0.5)

    assert smoothed[0] == pytest.approx(1.0)
    assert math.isnan(smoothed[1])
    # The NaN neither updates the average nor counts: the third value is the second finite one.
    assert smoothed[2] == pytest.approx((0.5 * 0.5 + 0.5 * 3.0) / 0.75)


@pytest.mark.parametrize("weight", [-0.1, 1.0, 1.5])
def test_ema_rejects_bad_weight(weight):
    with pytest.raises(ValueError, match="outside 0 to 0.99"):
        smooth_ema([1.0, 2.0], weight)


def test_resample_overlap_grid():
    first = (np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0]))
    second = (np.array([0.0, 1.5, 2.5, 4.0]), np.array([0.0, 15.0, 25.0, 40.0]))

    grid, values = resample([first, second])

    # Only x in [1, 3], where both runs have points: the union of their x values there.
    assert grid.tolist() == [1.0, 1.5, 2.0, 2.5, 3.0]
    assert values[0].tolist() == pytest.approx([10.0, 15.0, 20.0, 25.0, 30.0])
    assert values[1].tolist() == pytest.approx([10.0, 15.0, 20.0, 25.0, 30.0])


def test_resample_caps_grid_points():
    series = [(np.arange(5000.0), np.arange(5000.0)), (np.arange(5000.0) + 0.5, np.arange(5000.0))]

    grid, values = resample(series, max_points=100)

    assert len(grid) == 100
    assert values.shape == (2, 100)


def group_of_two() -> CurveSource:
    first = RunHistory(steps=[], epochs=epochs_of({"val_loss": [1.0, 0.5, 0.25]}))
    second = RunHistory(steps=[], epochs=epochs_of({"val_loss": [3.0, 1.5, 0.75]}))
    return CurveSource("group:1", "group 1", [first, second], is_group=True)


def test_group_mean_and_range_band():
    curve = build_curve(group_of_two(), "val_loss", "epoch", band="range")

    assert curve.x.tolist() == [1.0, 2.0, 3.0]
    assert curve.y.tolist() == pytest.approx([2.0, 1.0, 0.5])
    assert curve.low.tolist() == pytest.approx([1.0, 0.5, 0.25])
    assert curve.high.tolist() == pytest.approx([3.0, 1.5, 0.75])
    assert curve.runs == 2


def test_group_std_band():
    curve = build_curve(group_of_two(), "val_loss", "epoch", band="std")

    spread = np.array([2.0, 1.0, 0.5]) / math.sqrt(2)  # sample std of two values a, b is |a - b| / sqrt(2)
    assert curve.low.tolist() == pytest.approx((np.array([2.0, 1.0, 0.5]) - spread).tolist())
    assert curve.high.tolist() == pytest.approx((np.array([2.0, 1.0, 0.5]) + spread).tolist())


def test_group_smooths_each_run():
    curve = build_curve(group_of_two(), "val_loss", "epoch", smoothing=0.5)

    expected = (smooth_ema([1.0, 0.5, 0.25], 0.5) + smooth_ema([3.0, 1.5, 0.75], 0.5)) / 2
    assert curve.y.tolist() == pytest.approx(expected.tolist())
    assert curve.raw.tolist() == pytest.approx([2.0, 1.0, 0.5])


def test_group_single_epoch_on_wall_time():
    # One epoch each, finished at different times: the ranges do not overlap, but the epoch does.
    first = RunHistory(steps=[], epochs=epochs_of({"val_accuracy": [0.96]}, wall_s=[20.0]))
    second = RunHistory(steps=[], epochs=epochs_of({"val_accuracy": [0.98]}, wall_s=[50.0]))

    curve = build_curve(CurveSource("group:1", "g", [first, second], is_group=True), "val_accuracy", "wall_time_s")

    assert curve.x.tolist() == [35.0]
    assert curve.y.tolist() == pytest.approx([0.97])
    assert (curve.low.tolist(), curve.high.tolist()) == ([0.96], [0.98])


def test_step_axis_places_epochs():
    history = RunHistory(
        steps=[{"step": step, "epoch": step / 4, "train_loss": 1.0} for step in range(1, 9)],
        epochs=epochs_of({"val_accuracy": [0.9, 0.95]}),
    )

    x, y = metric_points(history, "val_accuracy", "step")

    assert x.tolist() == [4.0, 8.0]  # 4 steps per epoch
    assert y.tolist() == [0.9, 0.95]


def test_wall_time_interpolated_for_steps():
    # Shipped checkpoints keep no wall time per step: it comes from the epoch ends.
    history = RunHistory(
        steps=[{"step": 1, "epoch": 0.5, "train_loss": 2.0}, {"step": 2, "epoch": 1.5, "train_loss": 1.0}],
        epochs=epochs_of({"val_loss": [1.0, 0.5]}, wall_s=[10.0, 30.0]),
    )

    x, _ = metric_points(history, STEP_LOSS, "wall_time_s")

    assert x.tolist() == [5.0, 20.0]


def test_missing_values_left_out():
    history = RunHistory(steps=[], epochs=epochs_of({"val_loss": [1.0, None, 0.5]}))

    x, y = metric_points(history, "val_loss", "epoch")

    assert x.tolist() == [1.0, 3.0]
    assert y.tolist() == [1.0, 0.5]


def test_unknown_axis_rejected():
    with pytest.raises(ValueError, match="unknown x axis 'time'"):
        metric_points(RunHistory([], []), "val_loss", "time")


def test_summary_run_values():
    source = CurveSource(
        "run:1", "#1 a", [RunHistory([], epochs_of({"val_loss": [0.5, 0.3, 0.4], "val_accuracy": [0.9, 0.97, 0.95]}))]
    )

    rows = {row["metric"]: row for row in summary_rows([source])}

    assert rows["validation loss"] == {
        "name": "#1 a", "metric": "validation loss", "runs": 1, "best": 0.3, "best_epoch": 2, "last": 0.4, "min": 0.3, "max": 0.5,
    }
    assert rows["validation accuracy"]["best"] == 0.97
    assert rows["validation accuracy"]["best_epoch"] == 2
    assert rows["validation accuracy"]["min"] == 0.9
    assert set(rows) == {"validation loss", "validation accuracy"}


def test_summary_group_mean():
    # The second run stopped after 2 epochs: only epochs 1 and 2 are averaged.
    first = RunHistory([], epochs_of({"val_loss": [1.0, 0.5, 0.2]}))
    second = RunHistory([], epochs_of({"val_loss": [3.0, 1.5]}))

    rows = summary_rows([CurveSource("group:1", "g", [first, second], is_group=True)])

    assert rows[0]["runs"] == 2
    assert rows[0]["best"] == pytest.approx(1.0)
    assert rows[0]["last"] == pytest.approx(1.0)
    assert rows[0]["max"] == pytest.approx(2.0)


def test_subject_tags_pair_first():
    tags = subject_tags(["run:1", "run:2", "group:3"], "group:3", "run:1")

    assert tags == {"group:3": "A", "run:1": "B", "run:2": "C"}


def test_table_key_follows_rows():
    rows = [{"key": "run:1"}, {"key": "run:2"}]

    assert table_key(rows) == table_key([dict(row) for row in rows])
    assert table_key(rows) != table_key(rows[::-1])
    assert table_key(rows) != table_key(rows + [{"key": "ensemble:1"}])
