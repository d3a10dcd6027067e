"""Fully connected baseline: the SimpleDenseNet of the Lightning-Hydra template.

784-64-128-64-10 with BatchNorm and ReLU has 67,978 parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from core.errors import ConfigError
from core.models.config import IMAGE_SIZE, NUM_CLASSES, check_probability, scale_channels


@dataclass
class DenseConfig:
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 128, 64])
    width_mult: float = 1.0
    dropout: float = 0.0

    def validate(self) -> list[dict]:
        if not self.hidden_sizes:
            raise ConfigError("hidden_sizes must list at least one layer size, e.g. [64, 128, 64]")
        check_probability(self.dropout, name="dropout")
        plan = []
        for i, size in enumerate(self.hidden_sizes):
            if size < 1:
                raise ConfigError(f"hidden_sizes[{i}] must be at least 1, got {size}")
            width = scale_channels(size, self.width_mult, where=f"layer {i + 1}")
            plan.append({"stage": f"layer {i + 1}", "units": width})
        return plan


class DenseNet(nn.Module):
    def __init__(self, config: DenseConfig) -> None:
        super().__init__()
        widths = [p["units"] for p in config.validate()]
        layers: list[nn.Module] = [nn.Flatten()]
        in_features = IMAGE_SIZE[0] * IMAGE_SIZE[1]
        for width in widths:
            layers += [nn.Linear(in_features, width), nn.BatchNorm1d(width), nn.ReLU()]
            if config.dropout > 0:
                layers.append(nn.Dropout(config.dropout))
            in_features = width
        layers.append(nn.Linear(in_features, NUM_CLASSES))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
