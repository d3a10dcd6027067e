"""Vision Transformer and CapsNet: shapes, budgets, rejected configs, FLOPs, margin loss and the shared engine."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from core.checkpoints import load_checkpoint, save_checkpoint
from core.data import normalize
from core.errors import ConfigError
from core.inference import predict_probabilities
from core.models import build_model, count_parameters, default_model_config, normalize_model_config, stage_plan
from core.models.capsnet import margin_loss, squash
from core.models.outputs import loss_and_scores, probabilities
from core.models.vit import Attention
from core.training import evaluate

BUDGET = 68_000


def config_of(arch: str, **settings) -> dict:
    return {**default_model_config(arch), **settings}


def rejection(config: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        stage_plan(config)
    with pytest.raises(ConfigError):
        build_model(config)
    return str(caught.value)


@pytest.mark.parametrize("arch", ["vit", "capsnet"])
def test_output_is_batch_by_ten(arch):
    model = build_model(default_model_config(arch)).eval()

    with torch.no_grad():
        scores = model(torch.randn(4, 1, 28, 28))

    assert scores.shape == (4, 10)
    assert scores.dtype == torch.float32


@pytest.mark.parametrize("arch", ["vit", "capsnet"])
def test_default_params_within_three_percent(arch):
    params = count_parameters(build_model(default_model_config(arch)))

    assert abs(params - BUDGET) <= 0.03 * BUDGET, f"{arch} has {params:,} parameters"


@pytest.mark.parametrize("patch,grid", [(4, (7, 7)), (7, (4, 4))])
def test_vit_patch_sets_token_grid(patch, grid):
    config = config_of("vit", patch_size=patch)
    plan = stage_plan(config)
    model = build_model(config).eval()

    with torch.no_grad():
        tokens = model.patch_embedding(torch.randn(2, 1, 28, 28))
        scores = model(torch.randn(2, 1, 28, 28))

    assert plan[0]["stage"] == "patch embedding"
    assert tuple(plan[0]["out_hw"]) == grid
    assert tuple(plan[0]["rf"]) == (patch, patch)
    assert len(plan) == 1 + default_model_config("vit")["depth"]
    for block in plan[1:]:
        assert tuple(block["out_hw"]) == grid
        assert tuple(block["rf"]) == (28, 28)
    assert tokens.shape == (2, grid[0] * grid[1], plan[0]["channels"])
    assert scores.shape == (2, 10)


def test_vit_bad_patch_rejected():
    message = rejection(config_of("vit", patch_size=5))

    assert "patch_size 5" in message
    assert "4" in message
    assert "7" in message


def test_vit_dim_not_divisible_rejected():
    message = rejection(config_of("vit", dim=50, heads=4))

    assert "dim 50" in message
    assert "heads 4" in message


@pytest.mark.parametrize(
    "change,fragment",
    [
        ({"pooling": "max"}, "'max'"),
        ({"depth": 0}, "depth"),
        ({"mlp_ratio": 0.0}, "mlp_ratio"),
        ({"dropout": 1.0}, "dropout"),
        ({"width_mult": 0.01}, "rounds to zero"),
    ],
)
def test_vit_bad_values_rejected(change, fragment):
    assert fragment in rejection(config_of("vit", **change))


def test_capsnet_zero_routing_rejected():
    message = rejection(config_of("capsnet", routing_iterations=0))

    assert "routing_iterations" in message
    assert "got 0" in message


def test_capsnet_oversized_kernel_rejected():
    message = rejection(config_of("capsnet", primary_kernel_size=[11, 11]))

    assert "(11, 11)" in message
    assert "primary capsules" in message
    assert "9x9" in message


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_vit_pooling_options_work(pooling):
    model = build_model(config_of("vit", pooling=pooling)).eval()

    with torch.no_grad():
        scores = model(torch.randn(3, 1, 28, 28))

    assert scores.shape == (3, 10)
    assert torch.isfinite(scores).all()
    assert (model.cls_token is not None) == (pooling == "cls")
    assert model.pos_embedding.shape[1] == 49 + (1 if pooling == "cls" else 0)


def test_vit_width_mult_keeps_heads_and_grows():
    counts = []
    for width_mult in (0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5):
        config = normalize_model_config(config_of("vit", width_mult=width_mult))
        plan = stage_plan(config)
        assert plan[0]["channels"] % config["heads"] == 0, width_mult
        counts.append(count_parameters(build_model(config)))

    assert counts == sorted(counts)
    assert len(set(counts)) == len(counts)


def test_vit_width_mult_steps_are_small():
    counts = []
    for hundredths in range(80, 121):
        counts.append(count_parameters(build_model(config_of("vit", width_mult=hundredths / 100))))

    for smaller, larger in zip(counts, counts[1:]):
        assert smaller <= larger
        assert larger / smaller - 1 < 0.04, "a 0.01 change of width_mult should change the count by a few percent"


def test_attention_flops_match_formula():
    batch, tokens, dim, heads = 2, 50, 48, 4
    attention = Attention(dim=dim, heads=heads)
    x = torch.randn(batch, tokens, dim)

    with FlopCounterMode(display=False) as counter:
        attention(x)

    # A matmul of (m x k) by (k x n) is 2*m*k*n FLOPs; biases and softmax are not counted.
    qkv = 2 * batch * tokens * dim * (3 * dim)
    scores = 2 * batch * heads * tokens * tokens * (dim // heads)  # q @ k^T
    mixing = 2 * batch * heads * tokens * tokens * (dim // heads)  # attn @ v
    projection = 2 * batch * tokens * dim * dim
    assert counter.get_total_flops() == qkv + scores + mixing + projection


def test_margin_loss_hand_computed():
    lengths = torch.zeros(2, 10)
    lengths[0, 0] = 0.5  # true class 0 is short: (0.9 - 0.5)^2 = 0.16
    lengths[1, 1] = 0.95  # true class 1 passes m+: no loss
    lengths[1, 2] = 0.4  # absent class 2 is long: 0.5 * (0.4 - 0.1)^2 = 0.045
    lengths[1, 3] = 0.1  # absent class 3 at m-: no loss
    labels = torch.tensor([0, 1])

    assert margin_loss(lengths, labels, reduction="sum").item() == pytest.approx(0.16 + 0.045)
    assert margin_loss(lengths, labels, reduction="mean").item() == pytest.approx((0.16 + 0.045) / 2)


def test_margin_loss_bad_reduction_rejected():
    with pytest.raises(ValueError, match="'none'"):
        margin_loss(torch.zeros(1, 10), torch.tensor([0]), reduction="none")


def test_squash_zero_is_finite():
    s = torch.zeros(3, 10, 16, requires_grad=True)

    v = squash(s)
    v.sum().backward()

    assert torch.equal(v, torch.zeros_like(v))
    assert torch.isfinite(s.grad).all()


def test_squash_keeps_length_below_one():
    v = squash(torch.randn(100, 16) * 100)

    assert (v.norm(dim=-1) < 1).all()


def test_capsnet_zero_input_has_no_nan():
    model = build_model(default_model_config("capsnet"))
    x = torch.zeros(4, 1, 28, 28)

    loss, scores = loss_and_scores(model, x, torch.zeros(4, dtype=torch.long))
    loss.backward()

    assert torch.isfinite(scores).all()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_capsnet_bfloat16_autocast_works():
    torch.manual_seed(0)
    model = build_model(default_model_config("capsnet"))
    x = torch.randn(8, 1, 28, 28)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, scores = loss_and_scores(model, x, torch.arange(8) % 10)
    loss.backward()

    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    assert torch.isfinite(scores).all()
    assert torch.isfinite(model.digits.weight.grad).all()


def test_capsnet_probabilities_sum_to_one():
    model = build_model(default_model_config("capsnet")).eval()

    with torch.no_grad():
        scores = model(torch.randn(5, 1, 28, 28))
    probs = probabilities(model, scores)

    assert torch.allclose(probs.sum(dim=1), torch.ones(5))
    assert (probs >= 0).all()
    assert torch.equal(probs.argmax(dim=1), scores.argmax(dim=1))


def test_capsnet_reconstruction_changes_params_and_loss():
    x = torch.randn(6, 1, 28, 28)
    y = torch.arange(6)
    torch.manual_seed(0)
    plain = build_model(config_of("capsnet", reconstruction=False))
    torch.manual_seed(0)
    decoding = build_model(config_of("capsnet", reconstruction=True))

    loss_plain, scores_plain = loss_and_scores(plain, x, y)
    loss_decoding, scores_decoding = loss_and_scores(decoding, x, y)

    assert count_parameters(decoding) > count_parameters(plain)
    assert plain.decoder is None
    assert torch.allclose(scores_plain, scores_decoding)
    assert loss_decoding.item() > loss_plain.item()


def test_capsnet_unshared_weights_have_more_params():
    shared = count_parameters(build_model(config_of("capsnet", share_weights=True)))
    unshared_model = build_model(config_of("capsnet", share_weights=False))

    with torch.no_grad():
        scores = unshared_model(torch.randn(2, 1, 28, 28))

    assert count_parameters(unshared_model) > shared
    assert scores.shape == (2, 10)


@pytest.mark.parametrize("config", [{"arch": "vit"}, {"arch": "capsnet"}, {"arch": "capsnet", "reconstruction": True}],
                         ids=["vit", "capsnet", "capsnet-reconstruction"])
def test_training_steps_lower_loss(mnist, config):
    torch.manual_seed(0)
    model = build_model(config)
    # 1e-3: the schedule's peak of 3e-3 without its warm-up barely moves a fresh ViT in 12 steps.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images, labels = mnist.train_images[:512], mnist.train_labels[:512]
    held_x, held_y = normalize(images[:256]), labels[:256]

    model.eval()
    with torch.no_grad():
        before, _ = loss_and_scores(model, held_x, held_y)
    model.train()
    for step in range(12):
        index = torch.arange(step * 40, step * 40 + 40) % 512
        loss, _ = loss_and_scores(model, normalize(images[index]), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        after, _ = loss_and_scores(model, held_x, held_y)

    assert after.item() < 0.95 * before.item()


def test_evaluate_uses_margin_loss(mnist):
    torch.manual_seed(0)
    model = build_model(default_model_config("capsnet"))
    images, labels = mnist.test_images[:300], mnist.test_labels[:300]

    result = evaluate(model, images, labels, batch_size=128)  # 128 + 128 + 44: sums over uneven batches
    with torch.no_grad():
        loss, scores = model.loss_and_scores(normalize(images), labels, reduction="mean")

    assert result.loss == pytest.approx(loss.item(), rel=1e-5)
    assert torch.equal(result.predictions, scores.argmax(dim=1))
    assert sum(map(sum, result.confusion)) == 300


@pytest.mark.parametrize("config", [{"arch": "vit", "pooling": "mean"}, {"arch": "capsnet", "reconstruction": True}],
                         ids=["vit", "capsnet"])
def test_checkpoint_round_trip_same_outputs(tmp_path, mnist, config):
    torch.manual_seed(0)
    config = normalize_model_config(config)
    model = build_model(config).eval()
    path = save_checkpoint(tmp_path / "model.safetensors", model, config, {"test_accuracy": 0.5})
    x = normalize(mnist.test_images[:16])

    loaded = load_checkpoint(path)
    model.to(memory_format=torch.channels_last)  # as loaded on CPU, so both sum in the same order

    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    assert loaded.model_config == config


def test_capsnet_predict_probabilities_rows_sum_to_one(tmp_path, mnist):
    config = normalize_model_config({"arch": "capsnet"})
    model = build_model(config).eval()
    path = save_checkpoint(tmp_path / "capsnet.safetensors", model, config, {})

    probs = predict_probabilities(load_checkpoint(path), normalize(mnist.test_images[:8]))

    assert probs.shape == (8, 10)
    assert torch.allclose(probs.sum(dim=1), torch.ones(8))
