"""Architectures: output shape, parameter budget, stage options, config round-trip and rejected configs."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from core.errors import ConfigError
from core.models import (
    ARCHITECTURES,
    build_model,
    count_parameters,
    default_model_config,
    normalize_model_config,
    stage_plan,
)

ALL_ARCHS = list(ARCHITECTURES)
STAGED_ARCHS = [name for name, spec in ARCHITECTURES.items() if spec.has_stages]
DEPTHWISE_ARCHS = [name for name, spec in ARCHITECTURES.items() if spec.has_depthwise]
KERNEL_SHAPES = [(3, 3), (5, 5), (1, 7), (7, 1)]


def with_first_stage(arch: str, **settings) -> dict:
    config = default_model_config(arch)
    config["stages"][0].update({k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()})
    return config


def param_count(config: dict) -> int:
    return count_parameters(build_model(config))


def state_shapes(model: torch.nn.Module) -> dict[str, tuple]:
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def conv_kernel_shapes(model: torch.nn.Module) -> set[tuple[int, int]]:
    return {tuple(m.kernel_size) for m in model.modules() if isinstance(m, torch.nn.Conv2d)}


def test_registry_has_core_archs():
    assert ALL_ARCHS == [
        "dense", "cnn", "se_cnn", "mobilenetv2", "efficientnet",
        "shufflenetv2", "ghostnet", "convnext", "vit", "capsnet", "cnn_best",
    ]


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_output_shape_is_batch_by_ten(arch):
    model = build_model(default_model_config(arch)).eval()

    with torch.no_grad():
        logits = model(torch.randn(3, 1, 28, 28))

    assert logits.shape == (3, 10)
    assert logits.dtype == torch.float32


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_default_params_in_budget(arch):
    params = param_count(default_model_config(arch))

    assert 60_000 <= params <= 75_000, f"{arch} has {params:,} parameters"


def test_dense_has_exact_params():
    assert param_count(default_model_config("dense")) == 67_978


@pytest.mark.parametrize("arch", STAGED_ARCHS)
@pytest.mark.parametrize("kernel", KERNEL_SHAPES, ids=lambda k: f"{k[0]}x{k[1]}")
def test_kernel_shape_option_builds(arch, kernel):
    config = with_first_stage(arch, kernel_size=kernel)
    model = build_model(config).eval()

    with torch.no_grad():
        logits = model(torch.randn(2, 1, 28, 28))

    assert logits.shape == (2, 10)
    assert kernel in conv_kernel_shapes(model)
    if kernel != (3, 3) and default_model_config(arch)["stages"][0]["kernel_size"] == [3, 3]:
        assert param_count(config) != param_count(default_model_config(arch))


@pytest.mark.parametrize("arch", STAGED_ARCHS)
def test_kernel_for_every_stage(arch):
    config = default_model_config(arch)
    for stage in config["stages"]:
        stage["kernel_size"] = [1, 3]

    model = build_model(config).eval()

    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert (1, 3) in conv_kernel_shapes(model)


@pytest.mark.parametrize("arch", STAGED_ARCHS)
def test_asymmetric_stride_builds(arch):
    config = default_model_config(arch)
    # The mobile nets already stride (2, 2) in stage 2; (1, 2) there keeps the height instead.
    index = 0 if arch in ("cnn", "se_cnn") else 1
    config["stages"][index]["stride"] = [1, 2]
    plan = [p for p in stage_plan(config) if p["stage"] != "stem"]
    model = build_model(config).eval()

    with torch.no_grad():
        logits = model(torch.randn(2, 1, 28, 28))

    assert logits.shape == (2, 10)
    height, width = plan[index]["out_hw"]
    assert width < height, f"width should shrink more than height: {plan[index]}"


@pytest.mark.parametrize("arch", ["cnn", "se_cnn"])
@pytest.mark.parametrize(
    "settings",
    [{"kernel_size": (1, 7)}, {"kernel_size": (7, 1)}, {"stride": (1, 2)}, {"stride": (2, 1), "pool": (1, 1)}],
    ids=["k1x7", "k7x1", "s1x2", "s2x1-nopool"],
)
def test_cnn_plan_matches_real_shapes(arch, settings):
    config = with_first_stage(arch, **settings)
    plan = stage_plan(config)
    model = build_model(config).eval()

    x = torch.randn(1, 1, 28, 28)
    with torch.no_grad():
        for stage, expected in zip(model.stages, plan):
            x = stage(x)
            assert tuple(x.shape[-2:]) == tuple(expected["out_hw"]), expected["stage"]
            assert x.shape[1] == expected["channels"], expected["stage"]


@pytest.mark.parametrize("arch", DEPTHWISE_ARCHS)
def test_full_convolution_has_more_params_than_depthwise(arch):
    depthwise = default_model_config(arch)
    full = copy.deepcopy(depthwise)
    for stage in full["stages"]:
        stage["groups"] = 1

    model = build_model(full).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 1, 28, 28))

    assert logits.shape == (2, 10)
    assert param_count(full) > param_count(depthwise)


@pytest.mark.parametrize("arch", DEPTHWISE_ARCHS)
def test_depthwise_uses_grouped_conv(arch):
    model = build_model(default_model_config(arch))
    grouped = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert grouped, "depthwise stages should use grouped convolutions"

    full = default_model_config(arch)
    for stage in full["stages"]:
        stage["groups"] = 1
    full_model = build_model(full)
    assert all(m.groups == 1 for m in full_model.modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize("arch", DEPTHWISE_ARCHS)
def test_saved_depthwise_flag_maps_onto_groups(arch):
    """Runs saved before ``groups`` existed stored ``depthwise: true/false`` per stage."""
    legacy = default_model_config(arch)
    for index, stage in enumerate(legacy["stages"]):
        del stage["groups"]
        stage["depthwise"] = index % 2 == 0
    upgraded = normalize_model_config(legacy)
    assert [stage["groups"] for stage in upgraded["stages"]] == [
        0 if index % 2 == 0 else 1 for index in range(len(legacy["stages"]))
    ]
    assert "depthwise" not in upgraded["stages"][0]


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_config_json_round_trip(arch):
    config = default_model_config(arch)
    if ARCHITECTURES[arch].has_stages:
        config["stages"][0]["kernel_size"] = [1, 7]
        config["stages"][1]["stride"] = [1, 2]
    config["width_mult"] = 0.75
    config = normalize_model_config(config)

    restored = json.loads(json.dumps(config))

    assert normalize_model_config(restored) == config
    assert state_shapes(build_model(restored)) == state_shapes(build_model(config))


def test_partial_config_gets_defaults():
    config = normalize_model_config({"arch": "cnn", "dropout": 0.2})

    assert config["dropout"] == 0.2
    assert config["stages"] == default_model_config("cnn")["stages"]


def test_width_mult_scales_params():
    small = default_model_config("cnn")
    small["width_mult"] = 0.5

    assert param_count(small) < param_count(default_model_config("cnn"))


def rejection(config: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        stage_plan(config)
    with pytest.raises(ConfigError):
        build_model(config)
    return str(caught.value)


def test_kernel_larger_than_input_rejected():
    config = default_model_config("cnn")
    config["stages"][2]["kernel_size"] = [9, 9]

    message = rejection(config)

    assert "stage 3" in message
    assert "(9, 9)" in message
    assert "7x7" in message


def test_mobile_kernel_too_large_rejected():
    config = default_model_config("mobilenetv2")
    config["stages"][3]["kernel_size"] = [5, 5]

    message = rejection(config)

    assert "stage 4" in message
    assert "4x4" in message


def test_pool_to_zero_rejected():
    config = default_model_config("cnn")
    config["stages"][2]["pool"] = [8, 8]

    message = rejection(config)

    assert "stage 3" in message
    assert "(8, 8)" in message
    assert "7x7" in message
    assert "0x0" in message


def test_strides_then_pool_rejected():
    config = default_model_config("se_cnn")
    config["stages"][0].update(stride=[2, 2], pool=[4, 4])  # 28 -> 14 -> 3
    config["stages"][1]["pool"] = [4, 4]

    message = rejection(config)

    assert "pooling (4, 4) at stage 2" in message
    assert "3x3" in message


@pytest.mark.parametrize("arch,where", [("cnn", "stage 1"), ("dense", "layer 1"), ("mobilenetv2", "the stem")])
def test_width_mult_to_zero_rejected(arch, where):
    config = default_model_config(arch)
    config["width_mult"] = 0.01

    message = rejection(config)

    assert where in message
    assert "rounds to zero" in message


def test_unknown_top_key_rejected():
    message = rejection({"arch": "cnn", "depth": 5})

    assert "'depth'" in message
    assert "stages" in message


def test_unknown_stage_key_rejected():
    config = default_model_config("efficientnet")
    config["stages"][1]["kernel"] = [3, 3]

    message = rejection(config)

    assert "'kernel'" in message
    assert "stages[1]" in message


def test_unknown_arch_rejected():
    message = rejection({"arch": "resnet50"})

    assert "resnet50" in message
    assert "cnn" in message


@pytest.mark.parametrize(
    "change,fragment",
    [
        ({"dropout": 1.0}, "dropout"),
        ({"width_mult": "wide"}, "width_mult"),
        ({"stages": []}, "at least one stage"),
    ],
)
def test_bad_values_rejected(change, fragment):
    config = {**default_model_config("cnn"), **change}

    assert fragment in rejection(config)


def test_bad_kernel_type_rejected():
    config = default_model_config("cnn")
    config["stages"][0]["kernel_size"] = 3

    message = rejection(config)

    assert "stages[0].kernel_size" in message


def test_huge_config_rejected_without_allocating():
    from core.models import MAX_PARAMETERS, build_model

    config = {"arch": "dense", "hidden_sizes": [100000, 100000]}  # 10 billion weights: 40 GB in float32

    with pytest.raises(ConfigError, match=f"limit of {MAX_PARAMETERS:,}"):
        build_model(config)


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_save_and_reload_same_outputs(arch, tmp_path):
    from core.checkpoints import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = build_model(default_model_config(arch)).eval()
    x = torch.randn(4, 1, 28, 28)
    path = save_checkpoint(tmp_path / f"{arch}.safetensors", model, normalize_model_config(default_model_config(arch)), {})
    reloaded = load_checkpoint(path).model
    model.to(memory_format=torch.channels_last)  # as loaded on CPU, so both sum in the same order
    with torch.no_grad():
        assert torch.equal(model(x), reloaded(x))


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_engine_steps_lower_the_loss(arch, mnist):
    """A few AdamW steps through the shared loss (cross-entropy, or CapsNet's margin loss) on real digits."""
    from core.data import normalize
    from core.models.outputs import loss_and_scores

    torch.manual_seed(0)
    model = build_model(default_model_config(arch)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = normalize(mnist.train_images[:64]), mnist.train_labels[:64]
    losses = []
    for _ in range(12):
        loss, _scores = loss_and_scores(model, x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize("pointwise", [False, True])
def test_relu_after_pool_matches_relu_before(pointwise):
    """The CNN applies ReLU after max pooling; values and gradients equal the usual order."""
    torch.manual_seed(0)
    model = build_model({"arch": "cnn", "stages": [{"channels": 8, "pointwise": pointwise}]}).train()
    stage = model.stages[0]
    block = stage[1] if pointwise else stage[0]  # the conv-BatchNorm block that ends the stage
    pool, relu = stage[-2], stage[-1]
    assert isinstance(pool, torch.nn.MaxPool2d) and isinstance(relu, torch.nn.ReLU)

    x = torch.randn(4, 1, 28, 28)
    swapped = stage(x)
    swapped.square().sum().backward()
    swapped_grad = block[0].weight.grad.clone()
    block[0].weight.grad = None

    before_block = stage[0](x) if pointwise else x
    usual = pool(torch.relu(block(before_block)))
    usual.square().sum().backward()
    assert torch.allclose(swapped, usual)
    assert torch.allclose(swapped_grad, block[0].weight.grad)
