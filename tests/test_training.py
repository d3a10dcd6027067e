"""Training loop on real MNIST subsets: accuracy, divergence, config checks, callbacks, cancel, dtypes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import core.training
from core.errors import ConfigError
from core.training import Callbacks, TrainingStopped, evaluate, prepare_run, train

CPU = {"device": "cpu"}


@pytest.fixture(scope="module")
def small_eval(mnist):
    """MNIST with 1,000 validation and 1,000 test images, so that convolutional runs evaluate faster."""
    return dataclasses.replace(
        mnist,
        val_images=mnist.val_images[:1000],
        val_labels=mnist.val_labels[:1000],
        test_images=mnist.test_images[:1000],
        test_labels=mnist.test_labels[:1000],
    )


class Recorder(Callbacks):
    """Callbacks that keep everything the loop reports and request a stop on the ``stop_on_call``-th check."""

    def __init__(self, stop_on_call: int | None = None) -> None:
        self.start: dict | None = None
        self.points: list[dict] = []
        self.batches: list[int] = []
        self.epochs: list[dict] = []
        self.stop_on_call = stop_on_call
        self.stop_checks = 0

    def on_start(self, info):
        self.start = info

    def on_steps(self, points):
        self.batches.append(len(points))
        self.points.extend(points)

    def on_epoch(self, metrics):
        self.epochs.append(metrics)

    def should_stop(self):
        self.stop_checks += 1
        return self.stop_on_call is not None and self.stop_checks >= self.stop_on_call


def test_dense_beats_chance(dense_result):
    assert dense_result.test.accuracy > 0.8
    assert dense_result.best_val_accuracy > 0.8
    assert dense_result.epochs_completed == 2
    assert dense_result.params == 67_978


def test_result_reports_configs(dense_result):
    assert dense_result.model_config["arch"] == "dense"
    assert dense_result.model_config["hidden_sizes"] == [64, 128, 64]
    assert dense_result.train_config["epochs"] == 2
    assert dense_result.train_config["train_subset"] == 5000
    assert dense_result.wall_time_s > 0


def test_confusion_counts_test_set(dense_result):
    confusion = torch.tensor(dense_result.test.confusion)

    assert confusion.shape == (10, 10)
    assert confusion.sum().item() == 10_000
    assert confusion.diag().sum().item() / 10_000 == pytest.approx(dense_result.test.accuracy, abs=1e-6)


def test_evaluate_matches_result(dense_result, mnist):
    again = evaluate(dense_result.model, mnist.test_images, mnist.test_labels)

    assert again.accuracy == pytest.approx(dense_result.test.accuracy, abs=1e-6)
    assert again.loss == pytest.approx(dense_result.test.loss, rel=1e-4)


def test_cnn_short_run_learns(small_eval):
    result = train({"arch": "cnn"}, {"epochs": 1, "train_subset": 2000, "batch_size": 64, "lr": 0.01, **CPU}, data=small_eval)

    assert result.test.accuracy > 0.5  # chance is 0.1


def test_same_seed_same_weights(mnist):
    settings = {"epochs": 1, "train_subset": 600, **CPU}
    first = train({"arch": "dense"}, settings, data=mnist)
    second = train({"arch": "dense"}, settings, data=mnist)

    for name, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, second.model.state_dict()[name]), name


def test_huge_lr_diverges(mnist):
    with pytest.raises(TrainingStopped) as caught:
        train({"arch": "dense"}, {"optimizer": "sgd", "lr": 100, "epochs": 1, "train_subset": 3000, **CPU}, data=mnist)

    assert caught.value.status == "diverged"
    assert "learning rate" in str(caught.value)


@pytest.mark.parametrize(
    "settings,fragment",
    [
        ({"lr": 0}, "lr must be positive"),
        ({"lr": -0.1}, "lr must be positive"),
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"batch_size": 4000, "train_subset": 3000}, "larger than the 3000 training images"),
        ({"batch_size": 60_000, "train_subset": None}, "larger than the 55000 training images"),
        ({"optimizer": "lbfgs"}, "unknown optimizer 'lbfgs'"),
        ({"scheduler": "step"}, "unknown scheduler"),
        ({"batch_size": 1}, "batch_size must be at least 2"),
        ({"momentum": 1.0}, "momentum"),
        ({"epochs": 2.5}, "whole number"),
        ({"warmup": 3}, "unknown setting 'warmup'"),
        ({"device": "tpu"}, "unknown device"),
    ],
)
def test_bad_train_config_rejected(mnist, settings, fragment):
    with pytest.raises(ConfigError) as caught:
        train({"arch": "dense"}, {"epochs": 1, "train_subset": 3000, **CPU, **settings}, data=mnist)

    assert fragment in str(caught.value)


def test_bad_model_config_rejected():
    with pytest.raises(ConfigError, match="unknown architecture"):
        prepare_run({"arch": "vgg"}, {})


def test_callbacks_get_epoch_metrics(mnist):
    recorder = Recorder()
    train({"arch": "dense"}, {"epochs": 2, "train_subset": 1000, **CPU}, data=mnist, callbacks=recorder)

    assert [m["epoch"] for m in recorder.epochs] == [1, 2]
    for metrics in recorder.epochs:
        for key in ("train_loss", "val_loss", "val_accuracy", "images_per_s", "epoch_time_s"):
            assert key in metrics, key
        assert 0.0 <= metrics["val_accuracy"] <= 1.0
        assert metrics["images_per_s"] > 0
        assert metrics["epoch_time_s"] > 0


def test_callbacks_get_start_info(mnist):
    recorder = Recorder()
    train({"arch": "dense"}, {"epochs": 2, "train_subset": 1000, "batch_size": 100, **CPU}, data=mnist, callbacks=recorder)

    assert recorder.start["params"] == 67_978
    assert recorder.start["train_size"] == 1000
    assert recorder.start["steps_per_epoch"] == 10
    assert recorder.start["total_steps"] == 20


def test_short_run_reports_every_step(mnist):
    recorder = Recorder()
    train({"arch": "dense"}, {"epochs": 2, "train_subset": 1000, "batch_size": 100, **CPU}, data=mnist, callbacks=recorder)

    assert [p["step"] for p in recorder.points] == list(range(1, 21))
    assert recorder.points[-1]["epoch"] == pytest.approx(2.0)
    for point in recorder.points:
        assert set(point) >= {"step", "epoch", "train_loss", "lr", "wall_time_s"}


@pytest.mark.parametrize("limit,epochs,subset", [(4, 3, 640), (10, 3, 2400), (40, 4, 2800)])
def test_step_points_are_thinned(mnist, monkeypatch, limit, epochs, subset):
    # A small MAX_LOSS_POINTS makes thinning start after a few steps.
    monkeypatch.setattr(core.training, "MAX_LOSS_POINTS", limit)
    recorder = Recorder()
    train({"arch": "dense"}, {"epochs": epochs, "train_subset": subset, "batch_size": 32, **CPU}, data=mnist, callbacks=recorder)

    steps = [p["step"] for p in recorder.points]
    assert recorder.start["total_steps"] > limit
    assert len(steps) <= limit
    assert steps == sorted(set(steps))
    assert steps[-1] == recorder.start["total_steps"]
    assert all(size <= 20 for size in recorder.batches)


def test_default_limit_caps_points(mnist):
    recorder = Recorder()
    # 1,050 images in batches of 2 make 525 steps per epoch and 2,100 steps in all.
    train({"arch": "dense"}, {"epochs": 4, "train_subset": 1050, "batch_size": 2, "scheduler": "constant", "lr": 1e-3, **CPU},
          data=mnist, callbacks=recorder)

    assert recorder.start["total_steps"] == 2100
    assert len(recorder.points) <= core.training.MAX_LOSS_POINTS
    assert len(recorder.points) < 2100


def test_should_stop_cancels(mnist):
    recorder = Recorder(stop_on_call=3)

    with pytest.raises(TrainingStopped) as caught:
        train({"arch": "dense"}, {"epochs": 3, "train_subset": 3000, "batch_size": 50, **CPU}, data=mnist, callbacks=recorder)

    assert caught.value.status == "cancelled"
    assert "step 3 " in str(caught.value)  # short runs check after every step
    assert recorder.epochs == []


def test_inputs_are_float32(small_eval):
    dtypes: set[torch.dtype] = set()

    def record_dtypes(module, inputs):
        for value in inputs:
            if isinstance(value, torch.Tensor):
                dtypes.add(value.dtype)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record_dtypes)
    try:
        train({"arch": "cnn"}, {"epochs": 1, "train_subset": 256, "batch_size": 64, **CPU}, data=small_eval)
    finally:
        handle.remove()

    assert dtypes == {torch.float32}


def test_early_stopping_stops(mnist):
    recorder = Recorder()
    settings = {"epochs": 6, "train_subset": 500, "lr": 1e-6, "scheduler": "constant", "early_stopping_patience": 1, **CPU}

    result = train({"arch": "dense"}, settings, data=mnist, callbacks=recorder)

    assert result.epochs_completed < 6
    assert result.best_epoch < result.epochs_completed


def test_subset_above_train_split_rejected():
    with pytest.raises(ConfigError, match="between 1 and 55,000"):
        prepare_run({"arch": "dense"}, {"train_subset": 55001})


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_rejected_up_front():
    with pytest.raises(ConfigError, match="'cuda' is not available"):
        prepare_run({"arch": "dense"}, {"device": "cuda"})
