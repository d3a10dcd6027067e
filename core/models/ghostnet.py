"""GhostNet-style network: ghost modules make half their channels with a cheap depthwise conv.

Han et al. 2020, "GhostNet: More Features from Cheap Operations" (arXiv:1911.11907),
scaled down to MNIST size.

A ghost module's primary 1x1 conv makes ceil(out / 2) channels, and a cheap
spatial conv (depthwise by default) makes as many again from them; the two are
concatenated and cut to ``out`` channels (the paper's ratio s = 2). A ghost
bottleneck expands with one ghost module, applies a depthwise kxk conv only when
it is strided, optionally squeeze-excitation, projects with a second ghost module
without activation and adds a shortcut.

Every spatial conv of a stage (the cheap convs and the strided conv) uses the
stage's ``kernel_size``, ``dilation`` and ``groups``. The default kernel is 3x3,
the size the paper uses for the cheap convs. The receptive field in the plan counts the cheap convs,
because half of each module's output passes through them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from core.errors import ConfigError
from core.models.config import (
    IMAGE_SIZE,
    NUM_CLASSES,
    ReceptiveField,
    check_probability,
    check_stage_counts,
    conv_output_size,
    pool_output_size,
    resolve_groups,
    scale_channels,
)
from core.models.layers import ConvBNAct, SqueezeExcite


@dataclass
class GhostStage:
    channels: int
    num_blocks: int = 1
    expand_ratio: int = 2  # hidden channels = block input channels x expand_ratio
    kernel_size: tuple[int, int] = (3, 3)
    stride: tuple[int, int] = (1, 1)  # applied by the first block of the stage
    dilation: tuple[int, int] = (1, 1)
    pool: tuple[int, int] = (1, 1)  # max-pool window (height, width) after the stage; (1, 1) is off
    groups: int = 0  # of the spatial convolutions: 0 is depthwise, 1 a full convolution, or any divisor
    se: bool = False  # squeeze-excitation on the hidden channels


def _default_stages() -> list[GhostStage]:
    return [
        GhostStage(24, num_blocks=1, expand_ratio=2),
        GhostStage(40, num_blocks=2, expand_ratio=3, stride=(2, 2), se=True),
        GhostStage(72, num_blocks=2, expand_ratio=2, se=True),
    ]


def ghost_split(out_channels: int) -> int:
    """Return the channels made by a ghost module's primary conv (and again by its cheap conv)."""
    return math.ceil(out_channels / 2)


@dataclass
class GhostNetConfig:
    stages: list[GhostStage] = field(default_factory=_default_stages)
    stem_channels: int = 16
    # The stride-2 stem works at 14x14 from the start: a quarter of the FLOPs on CPU.
    stem_stride: tuple[int, int] = (2, 2)
    head_channels: int = 128
    se_ratio: float = 0.25  # squeeze channels = hidden channels x se_ratio
    width_mult: float = 1.0
    dropout: float = 0.1

    def validate(self) -> list[dict]:
        """Return the per-stage shape plan, or raise ConfigError naming the stage and sizes."""
        if not self.stages:
            raise ConfigError("stages must list at least one stage")
        check_probability(self.dropout, name="dropout")
        if not 0.0 < self.se_ratio <= 1.0:
            raise ConfigError(f"se_ratio must be above 0 and at most 1, got {self.se_ratio}")

        stem_channels = scale_channels(self.stem_channels, self.width_mult, where="the stem")
        hw = conv_output_size(IMAGE_SIZE, kernel_size=(3, 3), stride=self.stem_stride, where="the stem")
        rf = ReceptiveField().conv((3, 3), self.stem_stride)
        plan = [{"stage": "stem", "in_hw": IMAGE_SIZE, "out_hw": hw, "channels": stem_channels, "rf": rf.value}]
        in_channels = stem_channels

        for i, stage in enumerate(self.stages):
            where = f"stage {i + 1}"
            check_stage_counts(stage, where=where)
            if stage.expand_ratio < 1:
                raise ConfigError(f"expand_ratio at {where} must be at least 1, got {stage.expand_ratio}")
            channels = scale_channels(stage.channels, self.width_mult, where=where)

            in_hw = hw
            block_groups = []
            for block in range(stage.num_blocks):
                stride = stage.stride if block == 0 else (1, 1)
                block_where = f"{where} block {block + 1}"
                hidden = in_channels * stage.expand_ratio
                hw = self._plan_block(stage, hw, stride, rf, where=block_where)
                block_groups.append(
                    resolve_groups(stage.groups, ghost_split(hidden), ghost_split(hidden), where=block_where)
                )
                resolve_groups(stage.groups, ghost_split(channels), ghost_split(channels), where=block_where)
                if tuple(stride) != (1, 1):
                    resolve_groups(stage.groups, hidden, hidden, where=block_where)
                    resolve_groups(stage.groups, in_channels, in_channels, where=block_where)  # the shortcut
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

    @staticmethod
    def _plan_block(stage: GhostStage, hw, stride, rf: ReceptiveField, *, where: str) -> tuple[int, int]:
        """Check one bottleneck's spatial convs, grow ``rf`` along them and return the output size."""
        same = (1, 1)
        kernel, dilation = stage.kernel_size, stage.dilation

        conv_output_size(hw, kernel_size=kernel, stride=same, dilation=dilation, where=where)  # expand's cheap conv
        rf.conv(kernel, same, dilation)
        if tuple(stride) != same:
            hw = conv_output_size(hw, kernel_size=kernel, stride=stride, dilation=dilation, where=where)
            rf.conv(kernel, stride, dilation)
        conv_output_size(hw, kernel_size=kernel, stride=same, dilation=dilation, where=where)  # project's cheap conv
        rf.conv(kernel, same, dilation)
        return hw


class GhostModule(nn.Module):
    """Primary 1x1 conv plus a cheap spatial conv on its output, concatenated and cut to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, *, kernel_size, dilation, groups: int, relu: bool,
                 where: str) -> None:
        super().__init__()
        act = nn.ReLU if relu else None
        primary = ghost_split(out_channels)
        self.out_channels = out_channels
        self.primary = ConvBNAct(in_channels, primary, kernel_size=(1, 1), act=act)
        self.cheap = ConvBNAct(
            primary,
            primary,
            kernel_size=kernel_size,
            dilation=dilation,
            groups=resolve_groups(groups, primary, primary, where=where),
            act=act,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        primary = self.primary(x)
        out = torch.cat([primary, self.cheap(primary)], dim=1)
        return out[:, : self.out_channels]  # an odd out_channels drops the last cheap channel


class GhostBottleneck(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        hidden: int,
        kernel_size,
        stride,
        dilation,
        groups: int,
        squeeze_channels: int,
        where: str,
    ) -> None:
        super().__init__()
        spatial = {"kernel_size": kernel_size, "dilation": dilation}
        strided = tuple(stride) != (1, 1)

        layers: list[nn.Module] = [GhostModule(in_channels, hidden, groups=groups, relu=True, where=where, **spatial)]
        if strided:
            hidden_groups = resolve_groups(groups, hidden, hidden, where=where)
            layers.append(ConvBNAct(hidden, hidden, stride=stride, groups=hidden_groups, act=None, **spatial))
        if squeeze_channels:
            layers.append(SqueezeExcite(hidden, squeeze_channels=squeeze_channels))
        layers.append(GhostModule(hidden, out_channels, groups=groups, relu=False, where=where, **spatial))
        self.block = nn.Sequential(*layers)

        shortcut: list[nn.Module] = []
        if strided:
            in_groups = resolve_groups(groups, in_channels, in_channels, where=where)
            shortcut.append(ConvBNAct(in_channels, in_channels, stride=stride, groups=in_groups, act=None, **spatial))
        if strided or in_channels != out_channels:
            shortcut.append(ConvBNAct(in_channels, out_channels, kernel_size=(1, 1), act=None))
        self.shortcut = nn.Sequential(*shortcut)  # empty: identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) + self.shortcut(x)


class GhostNet(nn.Module):
    def __init__(self, config: GhostNetConfig) -> None:
        super().__init__()
        plan = config.validate()

        in_channels = plan[0]["channels"]
        self.stem = ConvBNAct(1, in_channels, kernel_size=(3, 3), stride=config.stem_stride)

        stages: list[nn.Module] = []
        for i, stage in enumerate(config.stages):
            channels = plan[i + 1]["channels"]
            blocks: list[nn.Module] = []
            for block in range(stage.num_blocks):
                hidden = in_channels * stage.expand_ratio
                squeeze = max(1, round(hidden * config.se_ratio)) if stage.se else 0
                blocks.append(
                    GhostBottleneck(
                        in_channels,
                        channels,
                        hidden=hidden,
                        kernel_size=stage.kernel_size,
                        stride=stage.stride if block == 0 else (1, 1),
                        dilation=stage.dilation,
                        groups=stage.groups,
                        squeeze_channels=squeeze,
                        where=f"stage {i + 1} block {block + 1}",
                    )
                )
                in_channels = channels
            if tuple(stage.pool) != (1, 1):
                blocks.append(nn.MaxPool2d(kernel_size=tuple(stage.pool)))
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)

        head = scale_channels(config.head_channels, config.width_mult, where="the head")
        self.head = ConvBNAct(in_channels, head, kernel_size=(1, 1))
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(head, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.stages(self.stem(x)))
        x = x.mean(dim=(2, 3))  # global average pool: (B, C, H, W) -> (B, C)
        return self.classifier(self.dropout(x))
