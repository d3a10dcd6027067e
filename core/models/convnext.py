"""ConvNeXt V2-style network: depthwise 7x7 conv, LayerNorm, inverted MLP with GRN, residual.

Woo et al. 2023, "ConvNeXt V2: Co-designing and Scaling ConvNets with Masked
Autoencoders" (arXiv:2301.00808), scaled down to MNIST size.

The stem is a patchify conv (kernel equal to its stride, no padding) followed by
LayerNorm. Each block is a depthwise kxk conv, LayerNorm over channels, a 1x1
expansion by ``expand_ratio`` (4 in the paper), GELU, global response
normalisation (GRN), a 1x1 projection and a residual connection. A downsampling
layer (LayerNorm, then a conv whose kernel equals its stride) comes before every
stage whose ``stride`` is not (1, 1) or whose channels differ from the previous
stage. A stage's stride therefore acts in that layer and not in its blocks.
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
    strided_patch_size,
)
from core.models.layers import same_padding


@dataclass
class ConvNeXtStage:
    channels: int
    num_blocks: int = 1
    expand_ratio: int = 4  # hidden channels of the 1x1 MLP = channels x expand_ratio
    kernel_size: tuple[int, int] = (7, 7)
    stride: tuple[int, int] = (1, 1)  # of the downsampling layer before the stage (kernel = stride)
    dilation: tuple[int, int] = (1, 1)
    pool: tuple[int, int] = (1, 1)  # max-pool window (height, width) after the stage; (1, 1) is off
    groups: int = 0  # of the spatial convolution: 0 is depthwise, 1 a full convolution, or any divisor


def _default_stages() -> list[ConvNeXtStage]:
    # The third stage stays at 7x7, because a 7x7 kernel does not fit a 3x3 input.
    return [
        ConvNeXtStage(16, num_blocks=1),
        ConvNeXtStage(40, num_blocks=2, stride=(2, 2)),
        ConvNeXtStage(56, num_blocks=1),
    ]


def needs_downsampling(in_channels: int, out_channels: int, stride: tuple[int, int]) -> bool:
    return tuple(stride) != (1, 1) or in_channels != out_channels


@dataclass
class ConvNeXtConfig:
    stages: list[ConvNeXtStage] = field(default_factory=_default_stages)
    # The 2x2 patchify stem works at 14x14 from the start: a quarter of the FLOPs on CPU.
    patch_size: tuple[int, int] = (2, 2)
    width_mult: float = 1.0
    dropout: float = 0.1

    def validate(self) -> list[dict]:
        """Return the per-stage shape plan, or raise ConfigError naming the stage and sizes."""
        if not self.stages:
            raise ConfigError("stages must list at least one stage")
        check_probability(self.dropout, name="dropout")

        stem_channels = scale_channels(self.stages[0].channels, self.width_mult, where="the stem")
        hw = strided_patch_size(IMAGE_SIZE, stride=self.patch_size, where="the stem")
        rf = ReceptiveField().pool(self.patch_size)
        plan = [{"stage": "stem", "in_hw": IMAGE_SIZE, "out_hw": hw, "channels": stem_channels, "rf": rf.value}]
        in_channels = stem_channels

        for i, stage in enumerate(self.stages):
            where = f"stage {i + 1}"
            check_stage_counts(stage, where=where)
            if stage.expand_ratio < 1:
                raise ConfigError(f"expand_ratio at {where} must be at least 1, got {stage.expand_ratio}")
            channels = scale_channels(stage.channels, self.width_mult, where=where)

            in_hw = hw
            if needs_downsampling(in_channels, channels, stage.stride):
                hw = strided_patch_size(hw, stride=stage.stride, where=f"the downsampling layer of {where}")
                rf.pool(stage.stride)
            groups = resolve_groups(stage.groups, channels, channels, where=where)
            for block in range(stage.num_blocks):
                hw = conv_output_size(
                    hw,
                    kernel_size=stage.kernel_size,
                    stride=(1, 1),
                    dilation=stage.dilation,
                    where=f"{where} block {block + 1}",
                )
                rf.conv(stage.kernel_size, (1, 1), stage.dilation)

            if tuple(stage.pool) != (1, 1):
                hw = pool_output_size(hw, window=stage.pool, where=where)
                rf.pool(stage.pool)
            plan.append(
                {"stage": where, "in_hw": in_hw, "out_hw": hw, "channels": channels,
                 "groups": [groups] * stage.num_blocks, "rf": rf.value}
            )
            in_channels = channels
        return plan


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) tensor, at every position."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # (B, C, H, W) -> (B, H, W, C)
        return super().forward(x).permute(0, 3, 1, 2)


class GRN(nn.Module):
    """Global response normalisation of a channels-last (B, H, W, C) tensor.

    ConvNeXt V2 computes the L2 norm of each channel over all positions,
    G(X)_c = ||X_c||, divides it by its mean over channels, N(X)_c = G(X)_c / mean_c G(X),
    and returns gamma * (X * N(X)) + beta + X. Zero-initialised gamma and beta make
    the layer start as the identity.
    """

    def __init__(self, channels: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = torch.linalg.vector_norm(x, ord=2, dim=(1, 2), keepdim=True)  # (B, 1, 1, C)
        relative = norm / (norm.mean(dim=-1, keepdim=True) + self.eps)
        return self.gamma * (x * relative) + self.beta + x


class ConvNeXtBlock(nn.Module):
    def __init__(self, channels: int, *, kernel_size, dilation, groups: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = channels * expand_ratio
        self.spatial = nn.Conv2d(
            channels,
            channels,
            kernel_size=tuple(kernel_size),
            padding=same_padding(kernel_size, dilation),
            dilation=tuple(dilation),
            groups=groups,
        )
        self.norm = nn.LayerNorm(channels)
        self.expand = nn.Linear(channels, hidden)  # a 1x1 conv on channels-last data
        self.act = nn.GELU()
        self.grn = GRN(hidden)
        self.project = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.spatial(x).permute(0, 2, 3, 1)  # (B, C, H, W) -> (B, H, W, C)
        out = self.project(self.grn(self.act(self.expand(self.norm(out)))))
        return x + out.permute(0, 3, 1, 2)


class ConvNeXtV2(nn.Module):
    def __init__(self, config: ConvNeXtConfig) -> None:
        super().__init__()
        plan = config.validate()

        in_channels = plan[0]["channels"]
        patch = tuple(config.patch_size)
        self.stem = nn.Sequential(
            nn.Conv2d(1, in_channels, kernel_size=patch, stride=patch),
            LayerNorm2d(in_channels),
        )

        stages: list[nn.Module] = []
        for stage, shape in zip(config.stages, plan[1:]):
            channels = shape["channels"]
            layers: list[nn.Module] = []
            if needs_downsampling(in_channels, channels, stage.stride):
                stride = tuple(stage.stride)
                layers.append(LayerNorm2d(in_channels))
                layers.append(nn.Conv2d(in_channels, channels, kernel_size=stride, stride=stride))
            for block in range(stage.num_blocks):
                layers.append(
                    ConvNeXtBlock(
                        channels,
                        kernel_size=stage.kernel_size,
                        dilation=stage.dilation,
                        groups=shape["groups"][block],
                        expand_ratio=stage.expand_ratio,
                    )
                )
            if tuple(stage.pool) != (1, 1):
                layers.append(nn.MaxPool2d(kernel_size=tuple(stage.pool)))
            stages.append(nn.Sequential(*layers))
            in_channels = channels
        self.stages = nn.Sequential(*stages)

        self.norm = nn.LayerNorm(in_channels)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(in_channels, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        x = self.norm(x.mean(dim=(2, 3)))  # global average pool, then LayerNorm: (B, C, H, W) -> (B, C)
        return self.classifier(self.dropout(x))
