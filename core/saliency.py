"""Saliency maps: which pixels of a 28x28 digit pushed a model towards its prediction.

Two methods, both returning a (28, 28) float32 map where positive pixels support
the predicted class and negative pixels argue against it:

- gradient x input (Shrikumar et al., "Not Just a Black Box", 2016): the gradient
  of the predicted class's score with respect to each pixel's ink level, times that
  ink level. Pixels without ink get exactly 0. The class score is the model's raw
  output (logits, or capsule lengths for CapsNet), because softmax probabilities
  near 1 have vanishing gradients.
- occlusion (Zeiler and Fergus, "Visualizing and Understanding Convolutional
  Networks", 2014): erase a square patch of ink and record how much the predicted
  class's probability drops. Each pixel gets the mean drop over the patches that cover it.

An ensemble's map is the mean of its members' maps, each scaled to a largest
absolute value of 1 first, so every member counts equally.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from core.devices import memory_format_for
from core.errors import ConfigError
from core.invariance import batch_probabilities, standardized

METHODS = {"gradient_x_input": "gradient x input", "occlusion": "occlusion"}
FRAME_SIZE = 28
DEFAULT_PATCH_SIZE = 4
DEFAULT_STRIDE = 2


def _unit_input(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Return a (1, 1, 28, 28) float32 copy of a (28, 28) image in [0, 1], white ink on black."""
    unit = torch.as_tensor(np.asarray(image, dtype=np.float32)).clone()
    if unit.shape != (FRAME_SIZE, FRAME_SIZE):
        raise ConfigError(f"saliency needs a 28x28 image, got shape {tuple(unit.shape)}; prepare the digit with to_mnist first")
    return unit[None, None]


def gradient_x_input(model: nn.Module, image: np.ndarray | torch.Tensor, target: int) -> np.ndarray:
    """Return d(score of ``target``)/d(ink) times ink for each pixel of a (28, 28) image in [0, 1]."""
    unit = _unit_input(image).requires_grad_(True)
    memory_format = memory_format_for(torch.device("cpu"))
    # The page may run under inference mode or no_grad elsewhere; this step needs autograd.
    with torch.inference_mode(False), torch.enable_grad():
        scores = model(standardized(unit).contiguous(memory_format=memory_format))
        (gradient,) = torch.autograd.grad(scores[0, target].float(), unit)  # parameters get no .grad
    return (gradient * unit).detach()[0, 0].numpy().astype(np.float32)


def _patch_starts(patch_size: int, stride: int) -> list[int]:
    starts = list(range(0, FRAME_SIZE - patch_size + 1, stride))
    if starts[-1] != FRAME_SIZE - patch_size:
        starts.append(FRAME_SIZE - patch_size)  # the last patch reaches the far edge, so every pixel is covered
    return starts


def occlusion(
    model: nn.Module, image: np.ndarray | torch.Tensor, target: int, *,
    patch_size: int = DEFAULT_PATCH_SIZE, stride: int = DEFAULT_STRIDE,
) -> np.ndarray:
    """Return the mean drop in the probability of ``target`` when each pixel's covering patches are erased."""
    if not 1 <= patch_size <= FRAME_SIZE or not 1 <= stride <= patch_size:
        raise ConfigError(
            f"occlusion patch {patch_size} px with stride {stride} px is invalid; "
            f"use a patch of 1 to {FRAME_SIZE} px and a stride from 1 to the patch size"
        )
    unit = _unit_input(image)
    starts = _patch_starts(patch_size, stride)

    # One batch: the original image, then one copy per patch with that patch's ink erased.
    windows = [(top, left) for top in starts for left in starts]
    batch = unit.repeat(len(windows) + 1, 1, 1, 1)
    for index, (top, left) in enumerate(windows, start=1):
        batch[index, 0, top : top + patch_size, left : left + patch_size] = 0.0
    target_probabilities = batch_probabilities(model, standardized(batch))[:, target]
    drops = (target_probabilities[0] - target_probabilities[1:]).numpy()

    total = np.zeros((FRAME_SIZE, FRAME_SIZE), dtype=np.float64)
    coverage = np.zeros((FRAME_SIZE, FRAME_SIZE), dtype=np.float64)
    for drop, (top, left) in zip(drops, windows):
        total[top : top + patch_size, left : left + patch_size] += drop
        coverage[top : top + patch_size, left : left + patch_size] += 1
    return (total / coverage).astype(np.float32)


def saliency_map(model: nn.Module, image: np.ndarray | torch.Tensor, target: int, method: str, **options) -> np.ndarray:
    """Return the (28, 28) saliency map of one model's ``target`` class by ``method`` (a key of METHODS)."""
    if method == "gradient_x_input":
        return gradient_x_input(model, image, target, **options)
    if method == "occlusion":
        return occlusion(model, image, target, **options)
    raise ConfigError(f"unknown saliency method {method!r}; choose one of: {', '.join(METHODS)}")


def ensemble_saliency(models: list[nn.Module], image: np.ndarray | torch.Tensor, target: int, method: str, **options) -> np.ndarray:
    """Return the mean of the models' maps for ``target``, each scaled to a largest absolute value of 1.

    One model's map is returned unscaled.
    """
    maps = [saliency_map(model, image, target, method, **options) for model in models]
    if len(maps) == 1:
        return maps[0]
    scaled = [m / np.abs(m).max() if np.abs(m).max() > 0 else m for m in maps]
    return np.mean(scaled, axis=0).astype(np.float32)
