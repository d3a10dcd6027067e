"""Registry of architectures: each name maps to a config dataclass and a model class.

A model config is a dict of plain types ``{"arch": NAME, **settings}``, so it can be
stored as JSON with a run and rebuilt exactly with ``build_model``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from core.errors import ConfigError
from core.models.capsnet import CapsNet, CapsNetConfig
from core.models.cnn import CNN, BestCNNConfig, CNNConfig, SECNNConfig
from core.models.config import config_from_dict, config_to_dict
from core.models.convnext import ConvNeXtConfig, ConvNeXtV2
from core.models.dense import DenseConfig, DenseNet
from core.models.ghostnet import GhostNet, GhostNetConfig
from core.models.mobile import EfficientNetConfig, MobileNetV2, MobileNetV2Config, upgrade_mobile_settings
from core.models.shufflenet import ShuffleNetV2, ShuffleNetV2Config
from core.models.vit import ViT, ViTConfig


@dataclass(frozen=True)
class ArchSpec:
    name: str
    title: str
    description: str
    paper: str
    config_class: type
    model_class: type
    has_stages: bool  # per-stage kernel_size and stride can be edited
    has_depthwise: bool  # stages offer depthwise or full spatial convolution
    upgrade: Callable[[dict], dict] | None = None  # maps settings saved by older versions onto the current ones
    # Training settings this architecture is meant to be trained with; the CLI and the app start from them.
    recipe: dict[str, Any] = field(default_factory=dict)


ARCHITECTURES: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in [
        ArchSpec(
            "dense",
            "Dense net",
            "784-64-128-64-10 multilayer perceptron with BatchNorm; sees pixels, not shapes.",
            "Lightning-Hydra template SimpleDenseNet",
            DenseConfig,
            DenseNet,
            has_stages=False,
            has_depthwise=False,
        ),
        ArchSpec(
            "cnn",
            "Simple CNN",
            "Three conv-BatchNorm-ReLU-pool stages, global average pooling, linear classifier.",
            "LeCun et al. 1998, Gradient-based learning applied to document recognition",
            CNNConfig,
            CNN,
            has_stages=True,
            has_depthwise=False,
        ),
        ArchSpec(
            "se_cnn",
            "CNN + squeeze-excitation",
            "The simple CNN with a squeeze-excitation channel gate after every stage.",
            "Hu et al. 2018, Squeeze-and-Excitation Networks (arXiv:1709.01507)",
            SECNNConfig,
            CNN,
            has_stages=True,
            has_depthwise=False,
        ),
        ArchSpec(
            "mobilenetv2",
            "MobileNetV2",
            "Inverted residual blocks: 1x1 expand, depthwise conv, linear 1x1 projection.",
            "Sandler et al. 2018, MobileNetV2 (arXiv:1801.04381)",
            MobileNetV2Config,
            MobileNetV2,
            has_stages=True,
            has_depthwise=True,
            upgrade=upgrade_mobile_settings,
        ),
        ArchSpec(
            "efficientnet",
            "EfficientNet",
            "MBConv blocks with squeeze-excitation and SiLU, mixed 3x3 and 5x5 kernels.",
            "Tan and Le 2019, EfficientNet (arXiv:1905.11946)",
            EfficientNetConfig,
            MobileNetV2,
            has_stages=True,
            has_depthwise=True,
            upgrade=upgrade_mobile_settings,
        ),
        ArchSpec(
            "shufflenetv2",
            "ShuffleNetV2",
            "Channel split, a 1x1-depthwise-1x1 branch on one half, concatenation and channel shuffle.",
            "Ma et al. 2018, ShuffleNet V2 (arXiv:1807.11164)",
            ShuffleNetV2Config,
            ShuffleNetV2,
            has_stages=True,
            has_depthwise=True,
            upgrade=upgrade_mobile_settings,
        ),
        ArchSpec(
            "ghostnet",
            "GhostNet",
            "Ghost bottlenecks: a 1x1 conv makes half the channels, a cheap depthwise conv the other half.",
            "Han et al. 2020, GhostNet (arXiv:1911.11907)",
            GhostNetConfig,
            GhostNet,
            has_stages=True,
            has_depthwise=True,
            upgrade=upgrade_mobile_settings,
        ),
        ArchSpec(
            "convnext",
            "ConvNeXt V2",
            "Depthwise 7x7 conv, LayerNorm, 4x pointwise MLP with GELU and GRN, residual; patchify stem.",
            "Woo et al. 2023, ConvNeXt V2 (arXiv:2301.00808)",
            ConvNeXtConfig,
            ConvNeXtV2,
            has_stages=True,
            has_depthwise=True,
            upgrade=upgrade_mobile_settings,
        ),
        ArchSpec(
            "vit",
            "Vision Transformer",
            "Patch embedding, learned positions, pre-norm transformer blocks, class token or mean pooling.",
            "Dosovitskiy et al. 2021, An Image is Worth 16x16 Words (arXiv:2010.11929)",
            ViTConfig,
            ViT,
            has_stages=False,
            has_depthwise=False,
        ),
        ArchSpec(
            "capsnet",
            "CapsNet",
            "Convolutions, primary capsules and digit capsules joined by dynamic routing; margin loss.",
            "Sabour, Frosst and Hinton 2017, Dynamic Routing Between Capsules (arXiv:1710.09829)",
            CapsNetConfig,
            CapsNet,
            has_stages=False,
            has_depthwise=False,
        ),
        ArchSpec(
            "cnn_best",
            "CNN, best-accuracy preset",
            "Five conv-BatchNorm-ReLU stages (two per resolution), dropout 0.25, trained 25 epochs with augmentation.",
            "Simard et al. 2003, Best practices for CNNs applied to visual document analysis (ICDAR)",
            BestCNNConfig,
            CNN,
            has_stages=True,
            has_depthwise=False,
            recipe={"epochs": 25, "augment": True},
        ),
    ]
}


def default_train_settings(name: str) -> dict[str, Any]:
    """Training settings that differ from TrainConfig's defaults for architecture ``name``."""
    return dict(get_arch(name).recipe)


def get_arch(name: str) -> ArchSpec:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ConfigError(
            f"unknown architecture {name!r}; choose one of: {', '.join(ARCHITECTURES)}"
        ) from None


def default_model_config(name: str) -> dict[str, Any]:
    """Return the default config of architecture ``name`` as a JSON-ready dict."""
    spec = get_arch(name)
    return {"arch": name, **config_to_dict(spec.config_class())}


def parse_model_config(config: dict[str, Any]) -> tuple[ArchSpec, Any]:
    """Validate a model config dict and return its spec and config dataclass."""
    if not isinstance(config, dict) or "arch" not in config:
        raise ConfigError(f"a model config must be a mapping with an 'arch' key, got {config!r}")
    spec = get_arch(config["arch"])
    settings = {k: v for k, v in config.items() if k != "arch"}
    if spec.upgrade is not None:
        settings = spec.upgrade(copy.deepcopy(settings))
    parsed = spec.config_class()
    parsed = config_from_dict(spec.config_class, {**config_to_dict(parsed), **settings})
    return spec, parsed


def normalize_model_config(config: dict[str, Any]) -> dict[str, Any]:
    """Fill in defaults and return the complete, validated config as plain types."""
    spec, parsed = parse_model_config(copy.deepcopy(config))
    parsed.validate()
    return {"arch": spec.name, **config_to_dict(parsed)}


def stage_plan(config: dict[str, Any]) -> list[dict]:
    """Return each stage's input and output size and channels, or raise ConfigError."""
    _, parsed = parse_model_config(config)
    return parsed.validate()


MAX_PARAMETERS = 50_000_000  # far above any MNIST model here; stops a typo from exhausting memory


def check_model_size(config: dict[str, Any]) -> int:
    """Return the parameter count without allocating weights; raise ConfigError above MAX_PARAMETERS."""
    spec, parsed = parse_model_config(config)
    with torch.device("meta"):  # shapes only: no memory is allocated for the weights
        params = count_parameters(spec.model_class(parsed))
    if params > MAX_PARAMETERS:
        raise ConfigError(
            f"this config has {params:,} parameters, more than the limit of {MAX_PARAMETERS:,}; "
            "use fewer channels, smaller hidden sizes or a smaller width_mult"
        )
    return params


def build_model(config: dict[str, Any]) -> nn.Module:
    """Build the model, rejecting configs above MAX_PARAMETERS before any memory is allocated."""
    check_model_size(config)
    spec, parsed = parse_model_config(config)
    return spec.model_class(parsed)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
