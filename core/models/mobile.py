"""MobileNetV2-style and EfficientNet-style networks built from inverted residual blocks.

MobileNetV2: Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear
Bottlenecks" (arXiv:1801.04381). EfficientNet: Tan and Le 2019, "EfficientNet:
Rethinking Model Scaling for CNNs" (arXiv:1905.11946), whose MBConv block adds
squeeze-excitation and SiLU. Both are scaled down to MNIST size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from core.errors import ConfigError
from core.models.config import (
    IMAGE_SIZE,
    NUM_CLASSES,
    ReceptiveField,
    check_pair,
    check_probability,
    conv_output_size,
    pool_output_size,
    resolve_groups,
    scale_channels,
)
from core.models.layers import ConvBNAct, InvertedResidual


@dataclass
class MobileStage:
    channels: int
    num_blocks: int = 1
    expand_ratio: int = 4
    kernel_size: tuple[int, int] = (3, 3)
    stride: tuple[int, int] = (1, 1)  # applied by the first block of the stage
    dilation: tuple[int, int] = (1, 1)
    pool: tuple[int, int] = (1, 1)  # max-pool window (height, width) after the stage; (1, 1) is off
    groups: int = 0  # of the spatial convolution: 0 is depthwise, 1 a full convolution, or any divisor


def upgrade_mobile_settings(settings: dict) -> dict:
    """Map the older ``depthwise`` stage flag (runs saved before ``groups``) onto ``groups``."""
    for stage in settings.get("stages") or []:
        if isinstance(stage, dict) and "depthwise" in stage and "groups" not in stage:
            stage["groups"] = 0 if stage.pop("depthwise") else 1
    return settings


def _mobilenet_stages() -> list[MobileStage]:
    return [
        MobileStage(16, num_blocks=1, expand_ratio=1),
        MobileStage(24, num_blocks=2, expand_ratio=4, stride=(2, 2)),
        MobileStage(40, num_blocks=2, expand_ratio=4, stride=(2, 2)),
        MobileStage(72, num_blocks=1, expand_ratio=4),
    ]


def _efficientnet_stages() -> list[MobileStage]:
    return [
        MobileStage(16, num_blocks=1, expand_ratio=1),
        MobileStage(24, num_blocks=2, expand_ratio=4, kernel_size=(5, 5), stride=(2, 2)),
        MobileStage(40, num_blocks=2, expand_ratio=4, stride=(2, 2)),
        MobileStage(56, num_blocks=1, expand_ratio=4),
    ]


@dataclass
class MobileNetV2Config:
    stages: list[MobileStage] = field(default_factory=_mobilenet_stages)
    stem_channels: int = 16
    # The stride-2 stem works at 14x14 from the start: a quarter of the FLOPs on CPU.
    stem_stride: tuple[int, int] = (2, 2)
    head_channels: int = 128
    width_mult: float = 1.0
    dropout: float = 0.1

    def validate(self) -> list[dict]:
        """Return the per-stage shape plan, or raise ConfigError naming the stage and sizes."""
        if not self.stages:
            raise ConfigError("stages must list at least one stage")
        check_probability(self.dropout, name="dropout")
        se_ratio = getattr(self, "se_ratio", 0.0)
        if not 0.0 <= se_ratio <= 1.0:
            raise ConfigError(f"se_ratio must be between 0 and 1, got {se_ratio}")

        stem_channels = scale_channels(self.stem_channels, self.width_mult, where="the stem")
        hw = conv_output_size(IMAGE_SIZE, kernel_size=(3, 3), stride=self.stem_stride, where="the stem")
        rf = ReceptiveField().conv((3, 3), self.stem_stride)
        plan = [{"stage": "stem", "in_hw": IMAGE_SIZE, "out_hw": hw, "channels": stem_channels, "rf": rf.value}]
        in_channels = stem_channels

        for i, stage in enumerate(self.stages):
            where = f"stage {i + 1}"
            if stage.channels < 1:
                raise ConfigError(f"channels at {where} must be at least 1, got {stage.channels}")
            if stage.num_blocks < 1:
                raise ConfigError(f"num_blocks at {where} must be at least 1, got {stage.num_blocks}")
            if stage.expand_ratio < 1:
                raise ConfigError(f"expand_ratio at {where} must be at least 1, got {stage.expand_ratio}")
            check_pair(stage.pool, name="pool", where=where)
            channels = scale_channels(stage.channels, self.width_mult, where=where)
            in_hw = hw
            block_groups = []
            for block in range(stage.num_blocks):
                stride = stage.stride if block == 0 else (1, 1)
                block_where = f"{where} block {block + 1}"
                hw = conv_output_size(
                    hw, kernel_size=stage.kernel_size, stride=stride, dilation=stage.dilation, where=block_where
                )
                rf.conv(stage.kernel_size, stride, stage.dilation)
                hidden = in_channels * stage.expand_ratio
                block_groups.append(resolve_groups(stage.groups, hidden, hidden, where=block_where))
                in_channels = channels
            if tuple(stage.pool) != (1, 1):
                hw = pool_output_size(hw, window=stage.pool, where=where)
                rf.pool(stage.pool)
            plan.append(
                {"stage": where, "in_hw": in_hw, "out_hw": hw, "channels": channels, "groups": block_groups,
                 "rf": rf.value}
            )

        if self.head_channels < 1:
            raise ConfigError(f"head_channels must be at least 1, got {self.head_channels}")
        return plan


@dataclass
class EfficientNetConfig(MobileNetV2Config):
    stages: list[MobileStage] = field(default_factory=_efficientnet_stages)
    se_ratio: float = 0.25  # squeeze channels = block input channels * se_ratio


class MobileNetV2(nn.Module):
    """Inverted residual network. With ``se_ratio > 0`` and SiLU it is EfficientNet's MBConv stack."""

    def __init__(self, config: MobileNetV2Config) -> None:
        super().__init__()
        plan = config.validate()
        se_ratio = getattr(config, "se_ratio", 0.0)
        act = nn.SiLU if se_ratio > 0 else nn.ReLU6

        in_channels = plan[0]["channels"]
        self.stem = ConvBNAct(1, in_channels, kernel_size=(3, 3), stride=config.stem_stride, act=act)

        blocks: list[nn.Module] = []
        for stage, shape in zip(config.stages, plan[1:]):
            for block in range(stage.num_blocks):
                blocks.append(
                    InvertedResidual(
                        in_channels,
                        shape["channels"],
                        kernel_size=stage.kernel_size,
                        stride=stage.stride if block == 0 else (1, 1),
                        expand_ratio=stage.expand_ratio,
                        dilation=stage.dilation,
                        groups=shape["groups"][block],
                        se_ratio=se_ratio,
                        act=act,
                    )
                )
                in_channels = shape["channels"]
            if tuple(stage.pool) != (1, 1):
                blocks.append(nn.MaxPool2d(kernel_size=tuple(stage.pool)))
        self.blocks = nn.Sequential(*blocks)

        head = scale_channels(config.head_channels, config.width_mult, where="the head")
        self.head = ConvBNAct(in_channels, head, kernel_size=(1, 1), act=act)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(head, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        x = x.mean(dim=(2, 3))  # global average pool: (B, C, H, W) -> (B, C)
        return self.classifier(self.dropout(x))
