"""The engine's speed settings: channels_last weights, torch.compile and the CPU thread count."""

from __future__ import annotations

import pytest
import torch

import core.training as training_module
from core.checkpoints import load_checkpoint, save_checkpoint
from core.devices import THREADS_ENV, configure_threads, cpu_threads
from core.errors import ConfigError
from core.inference import predict_probabilities
from core.data import normalize

SMALL_CNN = {"arch": "cnn", "stages": [{"channels": 8}, {"channels": 16}]}
QUICK_RUN = {"epochs": 1, "train_subset": 512, "batch_size": 64, "device": "cpu"}


def test_channels_last_weights_save_loadable(mnist, tmp_path):
    result = training_module.train(SMALL_CNN, QUICK_RUN, data=mnist)
    weight = result.model.stages[1][0][0].weight  # the second stage's convolution (8 input channels)
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert not weight.is_contiguous()

    path = save_checkpoint(tmp_path / "cnn.safetensors", result.model, result.model_config, {})
    loaded = load_checkpoint(path)
    digits = normalize(mnist.test_images[:64])
    result.model.eval()
    with torch.inference_mode():
        expected = torch.softmax(result.model(digits.contiguous(memory_format=torch.channels_last)), dim=1)
    assert torch.allclose(predict_probabilities(loaded, digits), expected, atol=1e-5)


def test_compiled_run_saves_plain_names(mnist, tmp_path):
    """A compiled run saves the model's own parameter names, so its checkpoint loads without compile."""
    result = training_module.train({"arch": "dense"}, {**QUICK_RUN, "compile": True}, data=mnist)
    assert result.test.accuracy > 0.5

    path = save_checkpoint(tmp_path / "dense.safetensors", result.model, result.model_config, {})
    assert set(load_checkpoint(path).model.state_dict()) == set(result.model.state_dict())
    assert not any(name.startswith("_orig_mod") for name in result.model.state_dict())


def test_compile_failure_names_the_fix(mnist, monkeypatch):
    def broken_compile(model):
        def run(*args, **kwargs):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

        return run

    monkeypatch.setattr(training_module.torch, "compile", broken_compile)
    with pytest.raises(ConfigError, match=r"torch.compile failed on cpu \(RuntimeError: InvalidCxxCompiler.*turn compile off"):
        training_module.train({"arch": "dense"}, {**QUICK_RUN, "compile": True}, data=mnist)


def test_threads_argument_then_environment(monkeypatch):
    with cpu_threads(torch.get_num_threads()):  # restores the suite's thread count afterwards
        monkeypatch.setenv(THREADS_ENV, "1")
        assert configure_threads() == 1
        assert configure_threads(2) == 2
        assert torch.get_num_threads() == 2


@pytest.mark.parametrize(
    "text, message",
    [("two", r"\$MNIST_LAB_THREADS must be a whole number of threads, got 'two'"), ("0", "threads must be at least 1, got 0")],
)
def test_bad_thread_counts_are_rejected(monkeypatch, text, message):
    monkeypatch.setenv(THREADS_ENV, text)
    with pytest.raises(ConfigError, match=message):
        configure_threads()
