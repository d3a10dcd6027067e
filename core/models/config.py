"""Config dataclasses of plain types, and the shape checks shared by all models.

A model config round-trips through JSON: ``config_from_dict(cls, config_to_dict(c)) == c``.
Tuples such as ``kernel_size`` are stored as two-element lists in JSON.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

from core.errors import ConfigError

IMAGE_SIZE = (28, 28)
NUM_CLASSES = 10


def config_to_dict(config: Any) -> dict[str, Any]:
    """Convert a config dataclass (with nested stage dataclasses) to JSON-ready types."""

    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        return value

    return convert(config)


def config_from_dict(cls: type, data: dict[str, Any], *, where: str = "") -> Any:
    """Build ``cls`` from a dict, rejecting unknown keys and wrongly typed values."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__} must be a mapping of settings, got {data!r}")

    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown setting {', '.join(map(repr, unknown))} in {where or cls.__name__}; "
            f"valid settings are: {', '.join(sorted(names))}"
        )

    values = {}
    for name, raw in data.items():
        label = f"{where}.{name}" if where else name
        values[name] = _coerce(hints[name], raw, label)
    return cls(**values)


def _coerce(hint: Any, raw: Any, label: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)

    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if raw is None:
            return None
        inner = next(a for a in args if a is not type(None))
        return _coerce(inner, raw, label)
    if dataclasses.is_dataclass(hint):
        return config_from_dict(hint, raw, where=label)
    if origin is list:
        if not isinstance(raw, (list, tuple)):
            raise ConfigError(f"{label} must be a list, got {raw!r}")
        return [_coerce(args[0], item, f"{label}[{i}]") for i, item in enumerate(raw)]
    if origin is tuple:
        if not isinstance(raw, (list, tuple)) or len(raw) != len(args):
            raise ConfigError(f"{label} must be a pair like [3, 3] (height, width), got {raw!r}")
        return tuple(_coerce(a, item, label) for a, item in zip(args, raw))
    if hint is bool:
        if not isinstance(raw, bool):
            raise ConfigError(f"{label} must be true or false, got {raw!r}")
        return raw
    if hint is int:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw) or int(raw) != raw:
            raise ConfigError(f"{label} must be a whole number, got {raw!r}")
        return int(raw)
    if hint is float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
            raise ConfigError(f"{label} must be a finite number, got {raw!r}")
        return float(raw)
    if hint is str:
        if not isinstance(raw, str):
            raise ConfigError(f"{label} must be text, got {raw!r}")
        return raw
    return raw


def scale_channels(channels: int, width_mult: float, *, where: str) -> int:
    """Scale a channel count by ``width_mult``, rounded to a multiple of 2 below 32 and of 4 from 32 up.

    Steps of 4 keep wide layers tidy (timm's ``make_divisible`` uses 8, which is
    coarse at MNIST scale); steps of 2 in narrow layers let a small model be
    fitted closely to a parameter budget.
    """
    if width_mult <= 0:
        raise ConfigError(f"width_mult must be positive, got {width_mult}")
    scaled = channels * width_mult
    if scaled < 1:
        raise ConfigError(
            f"width_mult {width_mult} gives {where} {scaled:.2f} channels, which rounds to zero; "
            f"use width_mult of at least {1 / channels:.3g}"
        )
    if scaled < 4:
        return max(1, round(scaled))
    multiple = 2 if scaled < 31 else 4
    return max(4, int(scaled + multiple / 2) // multiple * multiple)


def check_pair(value: tuple[int, int], *, name: str, where: str, minimum: int = 1) -> None:
    if len(value) != 2 or any(v < minimum for v in value):
        raise ConfigError(f"{name} {tuple(value)} at {where} must be two whole numbers >= {minimum} (height, width)")


def conv_output_size(
    in_hw: tuple[int, int],
    *,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    where: str,
    dilation: tuple[int, int] = (1, 1),
) -> tuple[int, int]:
    """Return the output size of a same-padded convolution, or raise ConfigError naming ``where``."""
    check_pair(kernel_size, name="kernel", where=where)
    check_pair(stride, name="stride", where=where)
    check_pair(dilation, name="dilation", where=where)
    height, width = in_hw
    span = tuple(d * (k - 1) + 1 for k, d in zip(kernel_size, dilation))
    if span[0] > height or span[1] > width:
        spread = f" (spanning {span[0]}x{span[1]} with dilation {tuple(dilation)})" if tuple(dilation) != (1, 1) else ""
        raise ConfigError(
            f"kernel {tuple(kernel_size)}{spread} at {where} is larger than its {height}x{width} input; "
            "use a smaller kernel or dilation, or fewer strides and pools before it"
        )

    out = []
    for size, k, s, d in zip(in_hw, kernel_size, stride, dilation):
        out.append((size + 2 * d * (k // 2) - (d * (k - 1) + 1)) // s + 1)
    return out[0], out[1]


def resolve_groups(groups: int, in_channels: int, out_channels: int, *, where: str) -> int:
    """Return the number of convolution groups; 0 means depthwise (one group per channel).

    Raise ConfigError naming ``where`` when the groups do not divide both channel counts.
    """
    if groups < 0:
        raise ConfigError(f"groups at {where} must be 0 (depthwise) or at least 1, got {groups}")
    resolved = in_channels if groups == 0 else groups
    if in_channels % resolved or out_channels % resolved:
        raise ConfigError(
            f"groups {groups} at {where} must divide both its {in_channels} input and {out_channels} output "
            f"channels; use 1 (full convolution), 0 (depthwise) or a common divisor such as "
            f"{math.gcd(in_channels, out_channels)}"
        )
    return resolved


class ReceptiveField:
    """Receptive field per axis (height, width) along a network's main path, in input pixels.

    The theoretical field: it may exceed the 28x28 image, which then means the
    stage reads all of it. Attention, dense layers and capsule routing mix every
    position, so ``whole_image`` sets the field to at least the image size.
    """

    def __init__(self) -> None:
        self.size = [1, 1]
        self.jump = [1, 1]  # input pixels between neighbouring positions at this depth

    def conv(self, kernel_size, stride=(1, 1), dilation=(1, 1)) -> "ReceptiveField":
        for axis in range(2):
            self.size[axis] += (kernel_size[axis] - 1) * dilation[axis] * self.jump[axis]
            self.jump[axis] *= stride[axis]
        return self

    def pool(self, window) -> "ReceptiveField":
        """Add a pooling window whose stride equals its size."""
        return self.conv(window, window)

    def whole_image(self) -> "ReceptiveField":
        self.size = [max(s, full) for s, full in zip(self.size, IMAGE_SIZE)]
        return self

    @property
    def value(self) -> tuple[int, int]:
        return self.size[0], self.size[1]


def pool_output_size(in_hw: tuple[int, int], *, window: tuple[int, int], where: str) -> tuple[int, int]:
    """Return the output size of a max pool with stride equal to its window."""
    height, width = in_hw
    out_h, out_w = height // window[0], width // window[1]
    if out_h < 1 or out_w < 1:
        raise ConfigError(
            f"pooling {tuple(window)} at {where} shrinks its {height}x{width} input to {out_h}x{out_w}; "
            "turn pooling off for that stage or use fewer strides before it"
        )
    return out_h, out_w


def check_probability(value: float, *, name: str) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must be in [0, 1), got {value}")


def check_stage_counts(stage: Any, *, where: str) -> None:
    """Reject a stage with no channels or blocks, or a malformed pool window, naming ``where``."""
    if stage.channels < 1:
        raise ConfigError(f"channels at {where} must be at least 1, got {stage.channels}")
    if stage.num_blocks < 1:
        raise ConfigError(f"num_blocks at {where} must be at least 1, got {stage.num_blocks}")
    check_pair(stage.pool, name="pool", where=where)


def strided_patch_size(in_hw: tuple[int, int], *, stride: tuple[int, int], where: str) -> tuple[int, int]:
    """Return the output size of an unpadded convolution whose kernel equals its stride (a patchify layer)."""
    check_pair(stride, name="stride", where=where)
    height, width = in_hw
    out_h, out_w = height // stride[0], width // stride[1]
    if out_h < 1 or out_w < 1:
        raise ConfigError(
            f"stride {tuple(stride)} at {where} shrinks its {height}x{width} input to {out_h}x{out_w}; "
            "use a smaller stride there or fewer strides and pools before it"
        )
    return out_h, out_w
