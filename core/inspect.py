"""Look inside a trained model: the output of every stage and the first layer's filters.

Works on any architecture without knowing its classes: the model's top-level
children are its stages, and a child that is an ``nn.Sequential`` is a list of
stages (for example ``CNN.stages`` or ``MobileNetV2.blocks``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from core.data import load_raw, normalize
from core.errors import ConfigError
from core.models.config import IMAGE_SIZE


def _stage_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """List the stage-level modules of ``model`` in registration order, named by their module path."""
    stages = []
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential):
            stages += [(f"{name}.{index}", grandchild) for index, grandchild in child.named_children()]
        else:
            stages.append((name, child))
    return stages


def _as_grid(output: torch.Tensor) -> torch.Tensor | None:
    """Turn one image's stage output into (C, H, W), or None when it has no spatial layout."""
    if output.dim() == 3:  # (C, H, W): a convolutional feature map
        return output
    if output.dim() != 2:
        return None

    # (N, D) tokens, as in a vision transformer: N patches, or a class token plus N - 1 patches.
    tokens, dim = output.shape
    for skip in (0, 1):
        side = math.isqrt(tokens - skip)
        if tokens - skip > 1 and side * side == tokens - skip:
            patches = output[skip:]  # (side * side, D)
            return patches.transpose(0, 1).reshape(dim, side, side)
    return None


@torch.no_grad()
def stage_outputs(model: nn.Module, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """Run ``x`` (1, 1, 28, 28) through ``model`` and return each stage's output as (name, (C, H, W)).

    Stages whose output has no spatial layout (flattened features, logits) are left out.
    The model is switched to eval mode, so BatchNorm uses its running statistics.
    """
    if x.dim() != 4 or x.shape[0] != 1:
        raise ConfigError(f"stage_outputs needs one image shaped (1, 1, 28, 28), got {tuple(x.shape)}")

    captured: list[tuple[str, torch.Tensor]] = []

    def keep(name: str, output) -> None:
        if isinstance(output, (tuple, list)):
            output = output[0]
        if isinstance(output, torch.Tensor) and output.dim() in (3, 4):
            grid = _as_grid(output[0].detach().float().cpu())
            if grid is not None:
                captured.append((name, grid))

    hooks = [
        module.register_forward_hook(lambda _module, _inputs, output, name=name: keep(name, output))
        for name, module in _stage_modules(model)
    ]
    model.eval()
    try:
        model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return captured


def first_layer_filters(model: nn.Module) -> torch.Tensor | None:
    """Return the first layer's weights as images (N, kh, kw), or None when it has none to show.

    A Conv2d's weights are averaged over their input channels. A Linear layer
    with one input per pixel is reshaped to 28x28, one image per unit.
    """
    pixels = IMAGE_SIZE[0] * IMAGE_SIZE[1]
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.weight.detach().float().cpu().mean(dim=1)  # (out, in / groups, kh, kw) -> (out, kh, kw)
        if isinstance(module, nn.Linear):
            if module.in_features != pixels:
                return None
            return module.weight.detach().float().cpu().reshape(-1, *IMAGE_SIZE)
    return None


def select_digit(images: torch.Tensor, labels: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Return image ``index`` of uint8 ``images`` (N, 28, 28) as (normalised (1, 1, 28, 28), uint8 (28, 28), label).

    Raises ConfigError naming the valid range when ``index`` is outside ``images``.
    """
    if not 0 <= index < len(images):
        raise ConfigError(
            f"test digit index {index} is out of range; the MNIST test set has {len(images):,} images, "
            f"numbered 0 to {len(images) - 1:,}"
        )
    image = images[index]
    return normalize(image.unsqueeze(0)), image, int(labels[index])


def load_test_digit(index: int, data_dir=None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Return official MNIST test image ``index`` like ``select_digit``, reading the IDX files without downloading."""
    _, _, images, labels = load_raw(data_dir, download=False)
    return select_digit(images, labels, index)
