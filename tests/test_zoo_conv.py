"""ShuffleNetV2, GhostNet and ConvNeXt V2: shapes, budget, stage options, plans, rejections, checkpoints, training."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from core.checkpoints import load_checkpoint, save_checkpoint
from core.data import normalize
from core.errors import ConfigError
from core.models import build_model, count_parameters, default_model_config, normalize_model_config, stage_plan

ZOO_ARCHS = ["shufflenetv2", "ghostnet", "convnext"]
TARGET_PARAMS = 68_000


def with_first_stage(arch: str, **settings) -> dict:
    config = default_model_config(arch)
    config["stages"][0].update({k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()})
    return config


def with_first_stage_fitting(arch: str, **settings) -> dict:
    """Return the default config with ``settings`` in stage 1 and, for ConvNeXt, 3x3 kernels after it.

    A stride or pool in stage 1 leaves ConvNeXt's later stages a 3-pixel-wide input,
    which its default 7x7 kernels do not fit.
    """
    config = with_first_stage(arch, **settings)
    if arch == "convnext":
        for stage in config["stages"][1:]:
            stage["kernel_size"] = [3, 3]
    return config


def param_count(config: dict) -> int:
    return count_parameters(build_model(config))


def spatial_convs(model: nn.Module) -> list[nn.Conv2d]:
    """Convolutions with a kernel larger than 1x1 that keep the size at stride 1 (not stems or patchify layers)."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.Conv2d) and tuple(m.kernel_size) != (1, 1) and m.in_channels > 1 and m.padding != (0, 0)
    ]


def feature_shapes(model: nn.Module, x: torch.Tensor) -> list[tuple[int, int, int]]:
    """Return (channels, height, width) after the stem and after each stage, recorded by forward hooks."""
    shapes = []
    modules = [model.stem, *model.stages]
    hooks = [m.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape[1:]))) for m in modules]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return shapes


def rejection(config: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        stage_plan(config)
    with pytest.raises(ConfigError):
        build_model(config)
    return str(caught.value)


@pytest.mark.parametrize("arch", ZOO_ARCHS)
def test_output_shape(arch):
    model = build_model(default_model_config(arch)).eval()

    with torch.no_grad():
        logits = model(torch.randn(5, 1, 28, 28))

    assert logits.shape == (5, 10)


@pytest.mark.parametrize("arch", ZOO_ARCHS)
def test_default_params_within_three_percent(arch):
    params = param_count(default_model_config(arch))

    assert abs(params - TARGET_PARAMS) <= 0.03 * TARGET_PARAMS, f"{arch} has {params:,} parameters"


@pytest.mark.parametrize("arch", ZOO_ARCHS)
def test_width_mult_scales_every_channel_count(arch):
    wide = default_model_config(arch)
    wide["width_mult"] = 2.0

    base_plan, wide_plan = stage_plan(default_model_config(arch)), stage_plan(wide)
    base_model, wide_model = build_model(default_model_config(arch)), build_model(wide)

    assert [p["channels"] * 2 for p in base_plan] == [p["channels"] for p in wide_plan]
    base_widths = [m.out_channels for m in base_model.modules() if isinstance(m, nn.Conv2d)]
    wide_widths = [m.out_channels for m in wide_model.modules() if isinstance(m, nn.Conv2d)]
    assert [2 * c for c in base_widths] == wide_widths
    assert wide_model.classifier.in_features == 2 * base_model.classifier.in_features
    assert count_parameters(wide_model) > 3 * count_parameters(base_model)


@pytest.mark.parametrize("arch", ZOO_ARCHS)
@pytest.mark.parametrize(
    "settings",
    [{"kernel_size": (1, 7)}, {"kernel_size": (7, 1)}, {"stride": (1, 2)}, {"dilation": (2, 1)}, {"pool": (1, 2)}],
    ids=["k1x7", "k7x1", "s1x2", "d2x1", "p1x2"],
)
def test_plan_matches_real_shapes(arch, settings):
    config = with_first_stage_fitting(arch, **settings)
    plan = stage_plan(config)
    model = build_model(config).eval()

    shapes = feature_shapes(model, torch.randn(2, 1, 28, 28))

    assert len(shapes) == len(plan)
    for shape, expected in zip(shapes, plan):
        assert shape[1:] == tuple(expected["out_hw"]), expected["stage"]
        assert shape[0] == expected["channels"], expected["stage"]


@pytest.mark.parametrize("arch", ZOO_ARCHS)
def test_first_stage_options_take_effect(arch):
    default_out = stage_plan(default_model_config(arch))[1]["out_hw"]

    strided = stage_plan(with_first_stage_fitting(arch, stride=(1, 2)))[1]["out_hw"]
    pooled = stage_plan(with_first_stage_fitting(arch, pool=(1, 2)))[1]["out_hw"]
    kernels = {tuple(m.kernel_size) for m in build_model(with_first_stage(arch, kernel_size=(1, 7))).modules()
               if isinstance(m, nn.Conv2d)}
    dilations = {tuple(m.dilation) for m in build_model(with_first_stage(arch, dilation=(2, 1))).modules()
                 if isinstance(m, nn.Conv2d)}

    assert strided == (default_out[0], default_out[1] // 2)
    assert pooled == (default_out[0], default_out[1] // 2)
    assert (1, 7) in kernels
    assert (2, 1) in dilations


@pytest.mark.parametrize("arch", ZOO_ARCHS)
def test_groups_change_params(arch):
    def with_groups(groups: int) -> dict:
        config = default_model_config(arch)
        for stage in config["stages"]:
            stage["groups"] = groups
        return config

    full, pairs, depthwise = (build_model(with_groups(g)) for g in (1, 2, 0))

    assert count_parameters(full) > count_parameters(pairs) > count_parameters(depthwise)
    assert {m.groups for m in spatial_convs(full)} == {1}
    assert {m.groups for m in spatial_convs(pairs)} == {2}
    assert all(m.groups == m.in_channels == m.out_channels for m in spatial_convs(depthwise))
    # Two groups halve the weights of every spatial conv that has them.
    full_weights = sum(m.weight.numel() for m in spatial_convs(full))
    pair_weights = sum(m.weight.numel() for m in spatial_convs(pairs))
    assert full_weights == 2 * pair_weights
    assert count_parameters(full) - count_parameters(pairs) == full_weights - pair_weights


@pytest.mark.parametrize("arch", ZOO_ARCHS)
def test_plan_reports_groups(arch):
    config = with_first_stage(arch, groups=2)

    plan = stage_plan(config)

    assert set(plan[1]["groups"]) == {2}
    assert all(g > 2 for stage in plan[2:] for g in stage["groups"])


@pytest.mark.parametrize("arch", ZOO_ARCHS)
def test_groups_not_dividing_rejected(arch):
    config = with_first_stage(arch, groups=7)

    message = rejection(config)

    assert "groups 7 at stage 1" in message
    assert "divide" in message


@pytest.mark.parametrize("arch", ZOO_ARCHS)
def test_negative_groups_rejected(arch):
    message = rejection(with_first_stage(arch, groups=-1))

    assert "stage 1" in message
    assert "-1" in message


@pytest.mark.parametrize("arch", ZOO_ARCHS)
def test_kernel_larger_than_input_rejected(arch):
    config = default_model_config(arch)
    config["stages"][2]["kernel_size"] = [9, 9]

    message = rejection(config)

    assert "(9, 9) at stage 3" in message
    assert "7x7" in message


@pytest.mark.parametrize("arch", ZOO_ARCHS)
def test_dilated_kernel_too_wide_rejected(arch):
    config = default_model_config(arch)
    config["stages"][2]["kernel_size"] = [3, 3]
    config["stages"][2]["dilation"] = [1, 4]  # spans 9 columns of a 7-wide input

    message = rejection(config)

    assert "stage 3" in message
    assert "dilation (1, 4)" in message


@pytest.mark.parametrize("arch", ZOO_ARCHS)
def test_pool_to_zero_rejected(arch):
    config = default_model_config(arch)
    config["stages"][2]["pool"] = [8, 8]

    message = rejection(config)

    assert "pooling (8, 8) at stage 3" in message
    assert "0x0" in message


@pytest.mark.parametrize("arch", ZOO_ARCHS)
@pytest.mark.parametrize(
    "setting,value,fragment",
    [("channels", 0, "channels at stage 2"), ("num_blocks", 0, "num_blocks at stage 2"),
     ("pool", [0, 2], "pool (0, 2) at stage 2")],
)
def test_bad_stage_counts_rejected(arch, setting, value, fragment):
    config = default_model_config(arch)
    config["stages"][1][setting] = value

    assert fragment in rejection(config)


@pytest.mark.parametrize("arch", ZOO_ARCHS)
def test_width_mult_to_zero_rejected(arch):
    config = default_model_config(arch)
    config["width_mult"] = 0.01

    message = rejection(config)

    assert "the stem" in message
    assert "rounds to zero" in message


@pytest.mark.parametrize("channels", [1, 3])
def test_shufflenet_odd_channels_rejected(channels):
    config = with_first_stage("shufflenetv2", channels=channels)

    message = rejection(config)

    assert "stage 1" in message
    assert "even" in message
    assert f"come to {channels}" in message


def test_shufflenet_two_channels_build():
    config = with_first_stage("shufflenetv2", channels=2)

    model = build_model(config).eval()

    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_convnext_downsampling_to_zero_rejected():
    config = default_model_config("convnext")
    config["stages"][2]["stride"] = [8, 8]

    message = rejection(config)

    assert "stride (8, 8) at the downsampling layer of stage 3" in message
    assert "0x0" in message


def test_convnext_patch_larger_than_image_rejected():
    config = default_model_config("convnext")
    config["patch_size"] = [29, 2]

    message = rejection(config)

    assert "the stem" in message
    assert "0x14" in message


def test_ghostnet_bad_se_ratio_rejected():
    config = default_model_config("ghostnet")
    config["se_ratio"] = 0.0

    assert "se_ratio" in rejection(config)


def test_ghostnet_odd_channels_build():
    """A ghost module with an odd output count drops the last cheap channel."""
    config = {
        "arch": "ghostnet",
        "stem_channels": 3,
        "stages": [{"channels": 3, "expand_ratio": 1, "groups": 0}, {"channels": 8, "stride": [2, 2]}],
    }

    model = build_model(config).eval()
    shapes = feature_shapes(model, torch.randn(2, 1, 28, 28))

    assert [s[0] for s in shapes] == [p["channels"] for p in stage_plan(config)] == [3, 3, 8]


TINY_STAGE = {"channels": 8, "kernel_size": [3, 5], "dilation": [1, 2], "pool": [2, 2]}


@pytest.mark.parametrize(
    "config,expected",
    [
        # stem 3x3 stride 2: 3 (jump 2); 3x5 conv dilated (1, 2): +2*2, +4*2*2; 2x2 pool: +1*2 each.
        ({"arch": "shufflenetv2", "stem_stride": [2, 2], "stages": [TINY_STAGE]}, (9, 21)),
        # as above, but each ghost module's cheap conv grows the field, so the 3x5 conv counts twice.
        ({"arch": "ghostnet", "stem_stride": [2, 2], "stages": [TINY_STAGE]}, (13, 37)),
        # 2x2 patchify stem: 2 (jump 2); one 3x5 block: +4, +16; 2x2 pool: +2 each.
        ({"arch": "convnext", "patch_size": [2, 2], "stages": [TINY_STAGE]}, (8, 20)),
    ],
    ids=ZOO_ARCHS,
)
def test_receptive_field_by_hand(config, expected):
    plan = stage_plan(config)

    assert plan[-1]["rf"] == expected


def test_convnext_stride_grows_receptive_field():
    config = {"arch": "convnext", "patch_size": [2, 2],
              "stages": [{"channels": 8, "kernel_size": [3, 3]}, {"channels": 8, "kernel_size": [3, 3], "stride": [2, 1]}]}

    plan = stage_plan(config)

    # stem 2 (jump 2); 3x3 block: 6; 2x1 downsampling: +2 in height (jump 4, 2); 3x3 block: +8, +4.
    assert [p["rf"] for p in plan] == [(2, 2), (6, 6), (16, 10)]


@pytest.mark.parametrize("arch", ZOO_ARCHS)
def test_checkpoint_round_trip(tmp_path, arch):
    torch.manual_seed(0)
    config = normalize_model_config(default_model_config(arch))
    model = build_model(config)
    with torch.no_grad():
        for parameter in model.parameters():  # GRN starts at zero; make every weight matter
            parameter.add_(0.05 * torch.randn_like(parameter))
    model.train()
    model(torch.randn(16, 1, 28, 28))  # moves the BatchNorm running statistics off their defaults
    model.eval()
    path = save_checkpoint(tmp_path / f"{arch}.safetensors", model, config, {"test_accuracy": 0.5})
    x = torch.randn(4, 1, 28, 28)

    loaded = load_checkpoint(path)
    model.to(memory_format=torch.channels_last)  # as loaded on CPU, so both sum in the same order

    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    assert loaded.model_config == config
    assert loaded.arch == arch


@pytest.mark.parametrize("arch", ZOO_ARCHS)
def test_training_steps_lower_loss(arch, mnist):
    torch.manual_seed(0)
    model = build_model(default_model_config(arch)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    images, labels = normalize(mnist.train_images[:64]), mnist.train_labels[:64]

    losses = []
    for _ in range(20):  # ConvNeXt's LayerNorms start slower than BatchNorm nets, so 8 steps are too few
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    assert losses[-1] < 0.85 * losses[0], losses


@pytest.mark.parametrize("arch", ZOO_ARCHS)
def test_saved_depthwise_flag_maps_onto_groups(arch):
    legacy = copy.deepcopy(default_model_config(arch))
    for stage in legacy["stages"]:
        del stage["groups"]
        stage["depthwise"] = False

    upgraded = normalize_model_config(legacy)

    assert [stage["groups"] for stage in upgraded["stages"]] == [1, 1, 1]
