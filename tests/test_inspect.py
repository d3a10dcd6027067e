"""core.inspect: stage outputs follow the stage plan, filters have the first layer's shape."""

from __future__ import annotations

import pytest
import torch

from core.errors import ConfigError
from core.inspect import first_layer_filters, load_test_digit, stage_outputs
from core.models import build_model, default_model_config, stage_plan


def _image() -> torch.Tensor:
    return torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def _is_subsequence(expected: list, actual: list) -> bool:
    remaining = iter(actual)
    return all(item in remaining for item in expected)


@pytest.mark.parametrize("arch", ["cnn", "mobilenetv2"])
def test_stage_outputs_follow_plan(arch):
    config = default_model_config(arch)
    plan = stage_plan(config)
    outputs = stage_outputs(build_model(config), _image())

    shapes = [tuple(tensor.shape) for _, tensor in outputs]
    expected = [(stage["channels"], *stage["out_hw"]) for stage in plan]
    # Each planned stage ends in one hooked module. Stages with several blocks add more hooked modules before it.
    assert _is_subsequence(expected, shapes), f"{expected} not found in order in {shapes}"
    assert all(tensor.dim() == 3 for _, tensor in outputs)


def test_stage_outputs_cnn_names():
    outputs = stage_outputs(build_model(default_model_config("cnn")), _image())

    assert [name for name, _ in outputs] == ["stages.0", "stages.1", "stages.2"]


def test_stage_outputs_dense_has_none():
    outputs = stage_outputs(build_model(default_model_config("dense")), _image())

    assert outputs == []


def test_stage_outputs_rejects_batch():
    model = build_model(default_model_config("cnn"))

    with pytest.raises(ConfigError, match=r"\(1, 1, 28, 28\)"):
        stage_outputs(model, torch.zeros(2, 1, 28, 28))


def test_stage_outputs_token_grid():
    from core.inspect import _as_grid

    with_class_token = torch.arange(50 * 8, dtype=torch.float32).reshape(50, 8)  # 1 + 7x7 tokens of dim 8
    grid = _as_grid(with_class_token)

    assert grid.shape == (8, 7, 7)
    assert torch.equal(grid[:, 0, 0], with_class_token[1])  # the class token is dropped
    assert tuple(_as_grid(torch.zeros(49, 8)).shape) == (8, 7, 7)  # patches only, no class token
    assert _as_grid(torch.zeros(12, 8)) is None  # neither 12 nor 11 is a square


def test_filters_cnn_shape():
    config = default_model_config("cnn")
    config["stages"][0]["kernel_size"] = [1, 7]
    filters = first_layer_filters(build_model(config))

    assert tuple(filters.shape) == (32, 1, 7)


def test_filters_dense_are_images():
    filters = first_layer_filters(build_model(default_model_config("dense")))

    assert tuple(filters.shape) == (64, 28, 28)


def test_test_digit_range(data_dir):
    tensor, image, label = load_test_digit(0, data_dir)

    assert tuple(tensor.shape) == (1, 1, 28, 28)
    assert tuple(image.shape) == (28, 28)
    assert label == 7  # the first MNIST test image is a 7
    with pytest.raises(ConfigError, match="out of range.*0 to 9,999"):
        load_test_digit(10_000, data_dir)
    with pytest.raises(ConfigError, match="out of range"):
        load_test_digit(-1, data_dir)
