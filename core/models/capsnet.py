"""Capsule network with dynamic routing for 28x28 digits.

Sabour, Frosst and Hinton 2017, Dynamic Routing Between Capsules (arXiv:1710.09829):
convolutions feed a convolutional layer whose outputs are grouped into primary
capsules (vectors squashed to a length below 1). Each primary capsule predicts
every digit capsule through a transformation matrix, and routing by agreement
decides how much each prediction counts. The length of a digit capsule is the
score of its class, trained with the margin loss, and an optional decoder
reconstructs the image from the digit capsule of the true class.

Differences from the paper, for a model of about 68,000 parameters:

- The paper has one 8x16 matrix per primary capsule position, type and class
  (1152 x 10 x 8 x 16, 1.5M weights). ``share_weights=True`` (the default) keeps
  one matrix per primary capsule type and class, shared over grid positions.
- The trunk is a few small convolutions with BatchNorm instead of one 9x9
  convolution with 256 channels, so the primary capsules sit on a 4x4 grid.
- The decoder is much smaller (``decoder_hidden`` units instead of 512 and 1024)
  and is off by default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import ConfigError
from core.models.config import (
    IMAGE_SIZE,
    NUM_CLASSES,
    ReceptiveField,
    check_pair,
    check_probability,
    scale_channels,
)

MARGIN_POSITIVE = 0.9  # m+: a present class should have a capsule at least this long
MARGIN_NEGATIVE = 0.1  # m-: an absent class should have a capsule at most this long
ABSENT_WEIGHT = 0.5  # lambda: down-weights absent classes so early training does not shrink every capsule
RECONSTRUCTION_WEIGHT = 0.0005  # times the sum of squared pixel errors, as Sabour et al. weight it
SQUASH_EPS = 1e-8
REDUCTIONS = ("mean", "sum")


@dataclass
class CapsConv:
    channels: int
    kernel_size: tuple[int, int] = (3, 3)
    stride: tuple[int, int] = (1, 1)


def _default_convs() -> list[CapsConv]:
    return [CapsConv(32, (5, 5)), CapsConv(32, (3, 3), (2, 2)), CapsConv(56, (3, 3))]


@dataclass
class CapsNetConfig:
    convs: list[CapsConv] = field(default_factory=_default_convs)  # conv-BatchNorm-ReLU, no padding
    primary_types: int = 8  # capsule types of the primary layer, before width_mult
    primary_dim: int = 8  # length of each primary capsule vector
    primary_kernel_size: tuple[int, int] = (3, 3)
    primary_stride: tuple[int, int] = (2, 2)
    digit_dim: int = 16  # length of each digit capsule vector
    routing_iterations: int = 3
    share_weights: bool = True  # one transformation matrix per primary type and class, shared over positions
    reconstruction: bool = False  # add the decoder and its reconstruction loss
    decoder_hidden: int = 32  # decoder MLP hidden units
    width_mult: float = 1.0  # scales conv channels and primary_types
    dropout: float = 0.0  # on the trunk's features before the primary capsules

    def validate(self) -> list[dict]:
        """Return the plan (each conv, the primary and the digit capsules), or raise ConfigError."""
        if not self.convs:
            raise ConfigError("convs must list at least one convolution, e.g. [{'channels': 32}]")
        if self.routing_iterations < 1:
            raise ConfigError(
                f"routing_iterations must be at least 1, got {self.routing_iterations}; the paper uses 3"
            )
        for name in ("primary_dim", "digit_dim", "decoder_hidden"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.primary_types < 1:
            raise ConfigError(f"primary_types must be at least 1, got {self.primary_types}")
        check_probability(self.dropout, name="dropout")

        plan = []
        hw = IMAGE_SIZE
        rf = ReceptiveField()
        for i, conv in enumerate(self.convs):
            where = f"conv {i + 1}"
            if conv.channels < 1:
                raise ConfigError(f"channels at {where} must be at least 1, got {conv.channels}")
            channels = scale_channels(conv.channels, self.width_mult, where=where)
            out_hw = valid_conv_size(hw, kernel_size=conv.kernel_size, stride=conv.stride, where=where)
            rf.conv(conv.kernel_size, conv.stride)
            plan.append({"stage": where, "in_hw": hw, "out_hw": out_hw, "channels": channels, "rf": rf.value})
            hw = out_hw

        types = scale_channels(self.primary_types, self.width_mult, where="the primary capsules")
        grid = valid_conv_size(
            hw, kernel_size=self.primary_kernel_size, stride=self.primary_stride, where="the primary capsules"
        )
        rf.conv(self.primary_kernel_size, self.primary_stride)
        plan.append(
            {"stage": "primary capsules", "in_hw": hw, "out_hw": grid, "channels": types * self.primary_dim,
             "capsule_types": types, "rf": rf.value}
        )
        plan.append(
            {"stage": "digit capsules", "in_hw": grid, "out_hw": (1, 1), "channels": NUM_CLASSES * self.digit_dim,
             "rf": rf.whole_image().value}
        )
        return plan


def valid_conv_size(
    in_hw: tuple[int, int], *, kernel_size: tuple[int, int], stride: tuple[int, int], where: str
) -> tuple[int, int]:
    """Return the output size of an unpadded convolution, or raise ConfigError naming ``where``."""
    check_pair(kernel_size, name="kernel", where=where)
    check_pair(stride, name="stride", where=where)
    height, width = in_hw
    if kernel_size[0] > height or kernel_size[1] > width:
        raise ConfigError(
            f"kernel {tuple(kernel_size)} at {where} is larger than its {height}x{width} input; "
            "use a smaller kernel, or fewer or smaller strides before it"
        )
    return (height - kernel_size[0]) // stride[0] + 1, (width - kernel_size[1]) // stride[1] + 1


def squash(s: torch.Tensor, *, dim: int = -1) -> torch.Tensor:
    """Shrink vectors to a length below 1 keeping their direction: |s|^2 / (1 + |s|^2) * s / |s|.

    The epsilon under the square root keeps a zero vector at zero with a finite gradient.
    """
    squared_norm = (s * s).sum(dim=dim, keepdim=True)
    return squared_norm / (1.0 + squared_norm) * s / torch.sqrt(squared_norm + SQUASH_EPS)


def capsule_lengths(v: torch.Tensor) -> torch.Tensor:
    """Return the length of each capsule vector (last axis), with a finite gradient at zero."""
    return torch.sqrt((v * v).sum(dim=-1) + SQUASH_EPS)


def margin_loss(lengths: torch.Tensor, y: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
    """Return the margin loss, summed over classes and reduced over the batch.

    L_k = T_k max(0, m+ - |v_k|)^2 + lambda (1 - T_k) max(0, |v_k| - m-)^2.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    present = F.one_hot(y, NUM_CLASSES).to(lengths.dtype)
    loss = present * F.relu(MARGIN_POSITIVE - lengths) ** 2
    loss = loss + ABSENT_WEIGHT * (1.0 - present) * F.relu(lengths - MARGIN_NEGATIVE) ** 2
    per_image = loss.sum(dim=1)
    return per_image.mean() if reduction == "mean" else per_image.sum()


class PrimaryCapsules(nn.Module):
    """A convolution whose output channels are ``types`` groups of ``capsule_dim``, squashed."""

    def __init__(self, in_channels: int, *, types: int, capsule_dim: int, kernel_size, stride) -> None:
        super().__init__()
        self.types = types
        self.capsule_dim = capsule_dim
        self.conv = nn.Conv2d(in_channels, types * capsule_dim, kernel_size=tuple(kernel_size), stride=tuple(stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)  # (B, types * capsule_dim, H, W)
        batch, _, height, width = x.shape
        x = x.view(batch, self.types, self.capsule_dim, height * width)
        return squash(x.transpose(2, 3))  # (B, types, positions, capsule_dim)


class DigitCapsules(nn.Module):
    """Predictions u_hat = W u from every primary capsule, combined by dynamic routing."""

    def __init__(
        self, *, types: int, positions: int, in_dim: int, out_dim: int, routing_iterations: int, share_weights: bool
    ) -> None:
        super().__init__()
        self.routing_iterations = routing_iterations
        self.share_weights = share_weights
        # One (out_dim x in_dim) matrix per type and class, or per type, position and class.
        shape = (types, NUM_CLASSES, out_dim, in_dim) if share_weights else (types, positions, NUM_CLASSES, out_dim, in_dim)
        self.weight = nn.Parameter(torch.randn(shape) * 0.05)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        batch = u.shape[0]
        if self.share_weights:
            u_hat = torch.einsum("btpd,tjed->btpje", u, self.weight)
        else:
            u_hat = torch.einsum("btpd,tpjed->btpje", u, self.weight)
        # Routing runs in float32 under autocast: small coupling differences matter in the softmax.
        u_hat = u_hat.reshape(batch, -1, NUM_CLASSES, u_hat.shape[-1]).float()  # (B, primary capsules, 10, out_dim)
        return self.route(u_hat)

    def route(self, u_hat: torch.Tensor) -> torch.Tensor:
        """Return the digit capsules (B, 10, out_dim) after ``routing_iterations`` rounds of agreement."""
        logits = torch.zeros(u_hat.shape[:3], device=u_hat.device, dtype=u_hat.dtype)  # b_ij: (B, N, 10)
        # The agreement updates use detached predictions, so the gradient flows only through the
        # final weighted sum. This keeps the backward pass as cheap as one routing round.
        detached = u_hat.detach()
        for iteration in range(self.routing_iterations):
            coupling = logits.softmax(dim=2)  # c_ij: each primary capsule splits its vote over the classes
            last = iteration == self.routing_iterations - 1
            predictions = u_hat if last else detached
            v = squash((coupling.unsqueeze(-1) * predictions).sum(dim=1))  # (B, 10, out_dim)
            if not last:
                logits = logits + (detached * v.unsqueeze(1)).sum(dim=-1)
        return v


class CapsNet(nn.Module):
    def __init__(self, config: CapsNetConfig) -> None:
        super().__init__()
        plan = config.validate()
        conv_plans, primary, _ = plan[:-2], plan[-2], plan[-1]

        layers: list[nn.Module] = []
        in_channels = 1
        for conv, shape in zip(config.convs, conv_plans):
            layers += [
                nn.Conv2d(in_channels, shape["channels"], kernel_size=tuple(conv.kernel_size), stride=tuple(conv.stride), bias=False),
                nn.BatchNorm2d(shape["channels"]),
                nn.ReLU(),
            ]
            in_channels = shape["channels"]
        if config.dropout > 0:
            layers.append(nn.Dropout(config.dropout))
        self.trunk = nn.Sequential(*layers)

        grid_h, grid_w = primary["out_hw"]
        self.primary = PrimaryCapsules(
            in_channels,
            types=primary["capsule_types"],
            capsule_dim=config.primary_dim,
            kernel_size=config.primary_kernel_size,
            stride=config.primary_stride,
        )
        self.digits = DigitCapsules(
            types=primary["capsule_types"],
            positions=grid_h * grid_w,
            in_dim=config.primary_dim,
            out_dim=config.digit_dim,
            routing_iterations=config.routing_iterations,
            share_weights=config.share_weights,
        )
        self.decoder = None
        if config.reconstruction:
            pixels = IMAGE_SIZE[0] * IMAGE_SIZE[1]
            self.decoder = nn.Sequential(
                nn.Linear(NUM_CLASSES * config.digit_dim, config.decoder_hidden),
                nn.ReLU(),
                nn.Linear(config.decoder_hidden, pixels),
                nn.Sigmoid(),
            )

    def digit_capsules(self, x: torch.Tensor) -> torch.Tensor:
        """Return the digit capsule vectors (B, 10, digit_dim) in float32."""
        return self.digits(self.primary(self.trunk(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the capsule lengths (B, 10): class scores in [0, 1) whose argmax is the prediction."""
        return capsule_lengths(self.digit_capsules(x))

    def reconstruct(self, v: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Decode the digit capsule of ``classes`` (others masked to zero) into pixels (B, 784) in [0, 1]."""
        mask = F.one_hot(classes, NUM_CLASSES).to(v.dtype).unsqueeze(-1)  # (B, 10, 1)
        return self.decoder((v * mask).flatten(1))

    def loss_and_scores(
        self, x: torch.Tensor, y: torch.Tensor, *, label_smoothing: float = 0.0, reduction: str = "mean"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the margin loss (plus the weighted reconstruction loss) and the capsule lengths.

        label_smoothing is ignored: the margin loss already stops pushing a class
        once its length passes m+ = 0.9 or falls below m- = 0.1.
        """
        v = self.digit_capsules(x)
        lengths = capsule_lengths(v)
        loss = margin_loss(lengths, y, reduction=reduction)
        if self.decoder is not None:
            loss = loss + RECONSTRUCTION_WEIGHT * self.reconstruction_error(x, v, y, lengths, reduction=reduction)
        return loss, lengths

    def reconstruction_error(self, x, v, y, lengths, *, reduction: str) -> torch.Tensor:
        """Return the sum of squared pixel errors per image, reduced over the batch.

        The decoder reads the capsule of the true class in training and of the predicted class otherwise.
        """
        from core.data import MEAN, STD  # the inputs are normalised; the decoder outputs pixels in [0, 1]

        classes = y if self.training else lengths.argmax(dim=1)
        pixels = (x.float() * STD + MEAN).flatten(1)
        reconstructed = self.reconstruct(v, classes).float()
        per_image = ((reconstructed - pixels) ** 2).sum(dim=1)
        return per_image.mean() if reduction == "mean" else per_image.sum()

    def probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        """Normalise capsule lengths (B, 10) to sum to 1 per image."""
        lengths = scores.float().clamp_min(SQUASH_EPS)
        return lengths / lengths.sum(dim=1, keepdim=True)
