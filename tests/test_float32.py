"""Every tensor that enters a model or a loss is float32, so training also runs on Apple MPS.

MPS has no float64 and only some bfloat16 kernels, and its adaptive pooling needs input sizes
that divide evenly. Without a Mac, this test trains every architecture one short epoch on the
CPU, with augmentation, and checks each module's inputs and outputs and each loss's inputs.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import core.models.capsnet as capsnet_module
import core.models.outputs as outputs_module
from core.models import ARCHITECTURES
from core.training import train

SUBSET = 128


@pytest.fixture(scope="module")
def small_mnist(mnist):
    """MNIST with 128 validation and test images, so each epoch's evaluations take no time."""
    data = copy.copy(mnist)
    data.val_images, data.val_labels = mnist.val_images[:SUBSET], mnist.val_labels[:SUBSET]
    data.test_images, data.test_labels = mnist.test_images[:SUBSET], mnist.test_labels[:SUBSET]
    return data


class DtypeLog:
    """Collect every floating tensor that is not float32, with where it was seen."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def check(self, where: str, values) -> None:
        for value in values if isinstance(values, (tuple, list)) else (values,):
            if torch.is_tensor(value) and value.is_floating_point() and value.dtype != torch.float32:
                self.problems.append(f"{where}: {value.dtype} {tuple(value.shape)}")

    def module_input(self, module: nn.Module, inputs) -> None:
        self.check(f"input of {type(module).__name__}", inputs)
        if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            size = module.output_size if isinstance(module.output_size, tuple) else (module.output_size,) * 2
            height, width = inputs[0].shape[-2:]
            if any(s is not None and dim % s for dim, s in zip((height, width), size)):
                self.problems.append(f"{type(module).__name__} pools {height}x{width} to {size}, which MPS cannot")

    def module_output(self, module: nn.Module, inputs, output) -> None:
        self.check(f"output of {type(module).__name__}", output)

    def loss(self, name: str, function):
        def checked(*args, **kwargs):
            self.check(f"input of {name}", [*args, *kwargs.values()])
            return function(*args, **kwargs)

        return checked


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_model_and_loss_inputs_float32(arch, small_mnist, monkeypatch):
    log = DtypeLog()
    monkeypatch.setattr(outputs_module.F, "cross_entropy", log.loss("cross_entropy", F.cross_entropy))
    monkeypatch.setattr(capsnet_module, "margin_loss", log.loss("margin_loss", capsnet_module.margin_loss))
    handles = [
        nn.modules.module.register_module_forward_pre_hook(log.module_input),
        nn.modules.module.register_module_forward_hook(log.module_output),
    ]
    try:
        result = train(
            {"arch": arch},
            {"epochs": 1, "train_subset": SUBSET, "batch_size": 64, "device": "cpu", "augment": True, "elastic": True},
            data=small_mnist,
        )
    finally:
        for handle in handles:
            handle.remove()

    assert result.epochs_completed == 1
    assert log.problems == []


def test_check_catches_float64_input(small_mnist, monkeypatch):
    """The hooks above must see a float64 tensor when one enters a model."""
    log = DtypeLog()
    handle = nn.modules.module.register_module_forward_pre_hook(log.module_input)
    try:
        nn.Linear(4, 2).double()(torch.zeros(1, 4, dtype=torch.float64))
    finally:
        handle.remove()
    assert log.problems == ["input of Linear: torch.float64 (1, 4)"]
