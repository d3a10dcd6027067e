"""Random affine and elastic augmentation, applied per batch on the training device.

Each image in a batch gets its own rotation, translation, scale and shear,
built as one (B, 2, 3) matrix and applied with ``affine_grid`` and
``grid_sample``, so a batch costs two tensor ops and no per-image Python.
Elastic distortion (Simard et al. 2003, "Best practices for convolutional
neural networks applied to visual document analysis") adds a random
displacement field smoothed by a Gaussian, scaled to ``elastic_alpha`` pixels.

Random numbers come from torch's default generator of the device, so on CPU a
resumed run continues the same augmentation stream (its state is saved with
the run's training state).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from core.errors import ConfigError


@dataclass(frozen=True)
class AugmentSettings:
    rotate_deg: float = 10.0  # rotation drawn uniformly from [-rotate_deg, rotate_deg]
    translate: float = 0.1  # shift per axis as a fraction of the image size
    scale: float = 0.1  # zoom drawn from [1 - scale, 1 + scale]
    shear_deg: float = 5.0  # horizontal shear angle drawn from [-shear_deg, shear_deg]
    elastic: bool = False
    elastic_alpha: float = 2.0  # largest displacement of an image, in pixels
    elastic_sigma: float = 4.0  # Gaussian smoothing of the displacement field, in pixels

    def validate(self) -> None:
        limits = {"rotate_deg": (0, 180), "translate": (0, 0.5), "scale": (0, 0.9), "shear_deg": (0, 60),
                  "elastic_alpha": (0, 28), "elastic_sigma": (0.5, 14)}
        for name, (low, high) in limits.items():
            value = getattr(self, name)
            if not (math.isfinite(value) and low <= value <= high):
                raise ConfigError(f"{name} must be between {low} and {high}, got {value}")


def _affine_matrices(batch: int, settings: AugmentSettings, device: torch.device) -> torch.Tensor:
    """(B, 2, 3) matrices mapping output to input coordinates in affine_grid's [-1, 1] space."""
    u = torch.rand(batch, 5, device=device) * 2 - 1  # five uniform draws in [-1, 1] per image
    angle = torch.deg2rad(u[:, 0] * settings.rotate_deg)
    shear = torch.tan(torch.deg2rad(u[:, 1] * settings.shear_deg))
    zoom = 1 + u[:, 2] * settings.scale
    shift = u[:, 3:5] * settings.translate * 2  # the image spans 2 units in grid coordinates

    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    matrices = torch.stack(
        [
            torch.stack([cos, -sin + shear * cos, shift[:, 0]], dim=1),
            torch.stack([sin, cos + shear * sin, shift[:, 1]], dim=1),
        ],
        dim=1,
    )
    return matrices


def _gaussian_kernel(sigma: float, device: torch.device) -> torch.Tensor:
    radius = max(1, math.ceil(2 * sigma))
    offsets = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def _elastic_offsets(batch: int, height: int, width: int, settings: AugmentSettings, device: torch.device) -> torch.Tensor:
    """(B, H, W, 2) smoothed random displacements in grid units."""
    field = torch.rand(batch * 2, 1, height, width, device=device) * 2 - 1
    kernel = _gaussian_kernel(settings.elastic_sigma, device)
    pad = len(kernel) // 2
    # Separable blur: rows, then columns.
    field = F.conv2d(F.pad(field, (pad, pad, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    field = F.conv2d(F.pad(field, (0, 0, pad, pad), mode="reflect"), kernel.view(1, 1, -1, 1))
    field = field / field.abs().amax(dim=(2, 3), keepdim=True).clamp_min(1e-6)  # peak displacement of 1 per image
    pixels_to_grid = torch.tensor([2 / width, 2 / height], device=device)
    return field.view(batch, 2, height, width).permute(0, 2, 3, 1) * settings.elastic_alpha * pixels_to_grid


def augment_batch(images: torch.Tensor, settings: AugmentSettings) -> torch.Tensor:
    """Return randomly transformed copies of float images (B, 1, H, W) in [0, 1]; the background stays 0."""
    batch, _, height, width = images.shape
    matrices = _affine_matrices(batch, settings, images.device).to(images.dtype)
    grid = F.affine_grid(matrices, list(images.shape), align_corners=False)
    if settings.elastic:
        grid = grid + _elastic_offsets(batch, height, width, settings, images.device).to(grid.dtype)
    # Zero padding is black, the MNIST background, because this runs before normalisation.
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
