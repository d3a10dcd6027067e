"""ShuffleNet V2-style network: channel split, a light branch, concatenation and channel shuffle.

Ma et al. 2018, "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture
Design" (arXiv:1807.11164), scaled down to MNIST size.

A basic unit splits its channels in half and passes one half through a 1x1 conv,
a depthwise kxk conv and another 1x1 conv. It concatenates the result with the
other half and shuffles the channels, so that the halves mix in the next unit. A
downsampling unit (the first unit of a stage whose stride is not (1, 1) or whose
channels differ from its input) sends the whole input through two branches and
concatenates them, so the output has the stage's channels.

The split needs an even channel count. ``scale_channels`` returns a multiple of 4
for every scaled count of 4 or more, so only counts of 1 or 3 can be odd, and
validation rejects them.
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
    check_probability,
    check_stage_counts,
    conv_output_size,
    pool_output_size,
    resolve_groups,
    scale_channels,
)
from core.models.layers import ConvBNAct


@dataclass
class ShuffleStage:
    channels: int  # output channels of every unit in the stage; must be even after width_mult
    num_blocks: int = 1
    kernel_size: tuple[int, int] = (3, 3)
    stride: tuple[int, int] = (1, 1)  # applied by the first unit of the stage
    dilation: tuple[int, int] = (1, 1)
    pool: tuple[int, int] = (1, 1)  # max-pool window (height, width) after the stage; (1, 1) is off
    groups: int = 0  # of the spatial convolutions: 0 is depthwise, 1 a full convolution, or any divisor


def _default_stages() -> list[ShuffleStage]:
    return [
        ShuffleStage(48, num_blocks=1),
        ShuffleStage(96, num_blocks=3, stride=(2, 2)),
        ShuffleStage(160, num_blocks=1),
    ]


@dataclass
class ShuffleNetV2Config:
    stages: list[ShuffleStage] = field(default_factory=_default_stages)
    stem_channels: int = 24
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

        stem_channels = scale_channels(self.stem_channels, self.width_mult, where="the stem")
        hw = conv_output_size(IMAGE_SIZE, kernel_size=(3, 3), stride=self.stem_stride, where="the stem")
        rf = ReceptiveField().conv((3, 3), self.stem_stride)
        plan = [{"stage": "stem", "in_hw": IMAGE_SIZE, "out_hw": hw, "channels": stem_channels, "rf": rf.value}]
        in_channels = stem_channels

        for i, stage in enumerate(self.stages):
            where = f"stage {i + 1}"
            check_stage_counts(stage, where=where)
            channels = scale_channels(stage.channels, self.width_mult, where=where)
            if channels % 2:
                raise ConfigError(
                    f"channels at {where} come to {channels} after width_mult {self.width_mult}, but the channel "
                    "split needs an even count; use more channels or a larger width_mult"
                )

            in_hw = hw
            block_groups = []
            for block in range(stage.num_blocks):
                stride = stage.stride if block == 0 else (1, 1)
                block_where = f"{where} block {block + 1}"
                hw = conv_output_size(
                    hw, kernel_size=stage.kernel_size, stride=stride, dilation=stage.dilation, where=block_where
                )
                rf.conv(stage.kernel_size, stride, stage.dilation)
                if is_downsampling(in_channels, channels, stride):
                    resolve_groups(stage.groups, in_channels, in_channels, where=block_where)  # the second branch
                block_groups.append(resolve_groups(stage.groups, channels // 2, channels // 2, where=block_where))
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


def is_downsampling(in_channels: int, out_channels: int, stride: tuple[int, int]) -> bool:
    """Return True when a unit needs two branches, because it changes the spatial size or the channel count."""
    return tuple(stride) != (1, 1) or in_channels != out_channels


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` equal groups, so each group passes channels to the others."""
    batch, channels, height, width = x.shape
    # (B, C, H, W) -> (B, groups, C/groups, H, W) -> swap the two channel axes -> (B, C, H, W)
    x = x.view(batch, groups, channels // groups, height, width).transpose(1, 2)
    return x.reshape(batch, channels, height, width)


def _branch(
    in_channels: int,
    out_channels: int,
    *,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> nn.Sequential:
    """1x1 conv, spatial conv without activation, 1x1 conv: the unit's main branch."""
    return nn.Sequential(
        ConvBNAct(in_channels, out_channels, kernel_size=(1, 1)),
        ConvBNAct(
            out_channels,
            out_channels,
            kernel_size=kernel_size,
            stride=stride,
            dilation=dilation,
            groups=groups,
            act=None,
        ),
        ConvBNAct(out_channels, out_channels, kernel_size=(1, 1)),
    )


class ShuffleUnit(nn.Module):
    """Basic unit: keep half the channels, transform the other half, concatenate and shuffle."""

    def __init__(self, channels: int, *, kernel_size, dilation, groups: int) -> None:
        super().__init__()
        half = channels // 2
        self.branch = _branch(half, half, kernel_size=kernel_size, stride=(1, 1), dilation=dilation, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity, active = x.chunk(2, dim=1)
        active = active.contiguous()  # oneDNN convs on a channel slice ran about 3x slower in backward
        return channel_shuffle(torch.cat([identity, self.branch(active)], dim=1), 2)


class ShuffleDownUnit(nn.Module):
    """Downsampling unit: two branches see the whole input, each makes half of the output channels."""

    def __init__(
        self, in_channels: int, out_channels: int, *, kernel_size, stride, dilation, groups: int, where: str
    ) -> None:
        super().__init__()
        half = out_channels // 2
        # The second branch is the spatial conv alone, so its groups must divide the input channels.
        shortcut_groups = resolve_groups(groups, in_channels, in_channels, where=where)
        self.shortcut = nn.Sequential(
            ConvBNAct(
                in_channels,
                in_channels,
                kernel_size=kernel_size,
                stride=stride,
                dilation=dilation,
                groups=shortcut_groups,
                act=None,
            ),
            ConvBNAct(in_channels, half, kernel_size=(1, 1)),
        )
        branch_groups = resolve_groups(groups, half, half, where=where)
        self.branch = _branch(
            in_channels, half, kernel_size=kernel_size, stride=stride, dilation=dilation, groups=branch_groups
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(torch.cat([self.shortcut(x), self.branch(x)], dim=1), 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, config: ShuffleNetV2Config) -> None:
        super().__init__()
        plan = config.validate()

        in_channels = plan[0]["channels"]
        self.stem = ConvBNAct(1, in_channels, kernel_size=(3, 3), stride=config.stem_stride)

        stages: list[nn.Module] = []
        for i, stage in enumerate(config.stages):
            channels = plan[i + 1]["channels"]
            units: list[nn.Module] = []
            for block in range(stage.num_blocks):
                stride = stage.stride if block == 0 else (1, 1)
                where = f"stage {i + 1} block {block + 1}"
                if is_downsampling(in_channels, channels, stride):
                    unit = ShuffleDownUnit(
                        in_channels,
                        channels,
                        kernel_size=stage.kernel_size,
                        stride=stride,
                        dilation=stage.dilation,
                        groups=stage.groups,
                        where=where,
                    )
                else:
                    unit = ShuffleUnit(
                        channels,
                        kernel_size=stage.kernel_size,
                        dilation=stage.dilation,
                        groups=plan[i + 1]["groups"][block],
                    )
                units.append(unit)
                in_channels = channels
            if tuple(stage.pool) != (1, 1):
                units.append(nn.MaxPool2d(kernel_size=tuple(stage.pool)))
            stages.append(nn.Sequential(*units))
        self.stages = nn.Sequential(*stages)

        head = scale_channels(config.head_channels, config.width_mult, where="the head")
        self.head = ConvBNAct(in_channels, head, kernel_size=(1, 1))
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(head, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.stages(self.stem(x)))
        x = x.mean(dim=(2, 3))  # global average pool: (B, C, H, W) -> (B, C)
        return self.classifier(self.dropout(x))
