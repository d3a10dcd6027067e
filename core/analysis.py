"""What a model costs and which pixels each stage reads: parameters, FLOPs per layer, output shapes and receptive field.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one
28x28 image, on the meta device, so no weights are allocated and nothing is
computed. We report multiply-adds (FlopCounterMode counts a multiply-add as 2
FLOPs, so its total is halved), the convention of the MobileNet and
EfficientNet papers. Grouped and depthwise convolutions and attention matmuls
are counted by the library's own formulas. The library does not count
element-wise work (activations, normalisation, pooling), so neither does this module.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from core.models import build_model, count_parameters, normalize_model_config, stage_plan
from core.models.config import IMAGE_SIZE

MACS_PER_FLOP_COUNT = 2  # FlopCounterMode counts one multiply-add as two floating-point operations


@dataclass
class LayerCost:
    name: str  # module path inside the model, e.g. "stages.0.0.0"
    type: str  # the module class, e.g. "Conv2d"
    kernel: tuple[int, ...] | None
    stride: tuple[int, ...] | None
    groups: int | None
    output_shape: tuple[int, ...] | None  # per image: (channels, height, width) or (features,)
    params: int  # parameters owned by this module itself, not its children
    flops: int  # multiply-adds of this module itself, not its children


@dataclass
class ModelCost:
    params: int
    flops: int  # multiply-adds for one 28x28 image
    receptive_field: tuple[int, int]  # of the last stage, (height, width) in input pixels
    stages: list[dict[str, Any]]  # the config's stage plan, with "rf" per stage
    layers: list[LayerCost] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Plain types for JSON, the run store and the CLI."""
        return {"params": self.params, "flops": self.flops, "receptive_field": list(self.receptive_field)}


def _shape_of(output: Any) -> tuple[int, ...] | None:
    if isinstance(output, torch.Tensor):
        return tuple(output.shape[1:])
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return tuple(output[0].shape[1:])
    return None


def _pair(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _count(model: nn.Module) -> tuple[dict[str, int], dict[str, tuple[int, ...] | None]]:
    """Run one meta image through ``model``; return FLOP counts and output shapes per module path."""
    shapes: dict[str, tuple[int, ...] | None] = {}

    def record(name: str, output: Any) -> None:  # a hook that returns a value would replace the output
        shapes.setdefault(name, _shape_of(output))

    hooks = [
        module.register_forward_hook(lambda _m, _i, out, name=name: record(name, out))
        for name, module in model.named_modules()
    ]
    root = type(model).__name__
    try:
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 1, *IMAGE_SIZE, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()

    totals = {}
    for key, by_op in counter.get_flop_counts().items():
        if key == "Global":
            continue
        if key == root:
            name = ""
        elif key.startswith(root + "."):
            name = key[len(root) + 1 :]
        else:
            continue
        totals[name] = sum(by_op.values()) // MACS_PER_FLOP_COUNT
    return totals, shapes


def _layers(model: nn.Module, flops: dict[str, int], shapes: dict) -> list[LayerCost]:
    """Return one row per module that owns parameters or does counted work itself, in execution order."""
    order = {name: index for index, name in enumerate(shapes)}
    rows = []
    for name, module in model.named_modules():
        own_params = sum(p.numel() for p in module.parameters(recurse=False))
        children = [f"{name}.{child}" for child, _ in module.named_children()]
        own_flops = flops.get(name, 0) - sum(flops.get(child, 0) for child in children)
        if name == "" and children:
            children = [child for child, _ in module.named_children()]
            own_flops = flops.get("", 0) - sum(flops.get(child, 0) for child in children)
        is_leaf = not children
        if not (own_params or own_flops > 0 or (is_leaf and name in shapes)):
            continue
        rows.append(
            LayerCost(
                name=name or "(top level)",  # tensors owned by the model itself, such as ViT's position embedding
                type=type(module).__name__,
                kernel=_pair(getattr(module, "kernel_size", None)),
                stride=_pair(getattr(module, "stride", None)),
                groups=getattr(module, "groups", None) if isinstance(module, nn.Conv2d) else None,
                output_shape=shapes.get(name),
                params=own_params,
                flops=max(own_flops, 0),
            )
        )
    rows.sort(key=lambda row: order.get(row.name, len(order)))
    return rows


def model_cost(model_config: dict[str, Any], *, layers: bool = False) -> ModelCost:
    """Measure a config's parameters, FLOPs and receptive field without allocating weights."""
    key = json.dumps(normalize_model_config(model_config), sort_keys=True)
    cost = _model_cost(key)
    if not layers:
        return ModelCost(cost.params, cost.flops, cost.receptive_field, cost.stages)
    return cost


@functools.lru_cache(maxsize=256)
def _model_cost(key: str) -> ModelCost:
    config = json.loads(key)
    plan = stage_plan(config)
    with torch.device("meta"):
        model = build_model(config)
    model.eval()  # the cost of inference: no dropout, BatchNorm uses running statistics
    flops, shapes = _count(model)
    receptive_field = tuple(plan[-1]["rf"]) if plan and "rf" in plan[-1] else IMAGE_SIZE
    return ModelCost(
        params=count_parameters(model),
        flops=flops.get("", 0),
        receptive_field=receptive_field,
        stages=[{**stage, "rf": tuple(stage["rf"])} if "rf" in stage else stage for stage in plan],
        layers=_layers(model, flops, shapes),
    )


def format_count(value: int | float | None) -> str:
    """Short human form: 68,000 -> '68.0k', 3,106,880 -> '3.11M'."""
    if value is None:
        return "-"
    for threshold, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= threshold:
            return f"{value / threshold:.3g}{suffix}" if value < 100 * threshold else f"{value / threshold:.0f}{suffix}"
    return str(int(value))
