"""Vision Transformer for 28x28 digits.

Dosovitskiy et al. 2021, An Image is Worth 16x16 Words (arXiv:2010.11929).
Non-overlapping patches are embedded linearly and get learned position
embeddings. They pass through pre-norm transformer blocks, each with
multi-head self-attention and then an MLP on residual connections. One vector,
the class token or the mean of the patch tokens, feeds the linear classifier.

Attention is written with explicit matmuls instead of
``F.scaled_dot_product_attention``, because ``torch.utils.flop_counter.FlopCounterMode``
(PyTorch 2.x) reports 0 FLOPs for the fused kernel on CPU and the project
reports FLOPs per layer with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from core.errors import ConfigError
from core.models.config import IMAGE_SIZE, NUM_CLASSES, ReceptiveField, check_probability

POOLINGS = ("cls", "mean")
# Divisors of 28. Patch size 1 is left out: 784 tokens need a 784x784 attention
# matrix per head and image, several GB per batch of 128.
PATCH_SIZES = (2, 4, 7, 14, 28)


@dataclass
class ViTConfig:
    patch_size: int = 4  # 4 gives a 7x7 grid of 49 tokens, 7 gives 4x4 = 16
    dim: int = 48  # token width before width_mult
    depth: int = 3  # transformer blocks
    heads: int = 4
    mlp_ratio: float = 2.5  # MLP hidden width = dim x mlp_ratio (see mlp_hidden under width_mult)
    pooling: str = "cls"  # "cls": a learned class token; "mean": average of the patch tokens
    width_mult: float = 1.0
    dropout: float = 0.0

    def validate(self) -> list[dict]:
        """Return the plan (patch embedding, then one entry per block), or raise ConfigError."""
        if self.patch_size not in PATCH_SIZES:
            raise ConfigError(
                f"patch_size {self.patch_size} does not divide the 28x28 image into a usable grid; "
                f"use one of {', '.join(map(str, PATCH_SIZES))} (4 or 7 are the usual choices)"
            )
        for name in ("dim", "depth", "heads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.dim % self.heads:
            raise ConfigError(
                f"dim {self.dim} is not divisible by heads {self.heads}; use a dim that is a multiple of "
                f"{self.heads}, such as {max(self.heads, self.dim // self.heads * self.heads)}, or change heads"
            )
        if not self.mlp_ratio > 0:
            raise ConfigError(f"mlp_ratio must be positive, got {self.mlp_ratio}; 2 to 4 is usual")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {self.pooling!r}; choose one of: {', '.join(POOLINGS)}")
        check_probability(self.dropout, name="dropout")

        dim = self.scaled_dim()
        grid = (IMAGE_SIZE[0] // self.patch_size, IMAGE_SIZE[1] // self.patch_size)
        patch = (self.patch_size, self.patch_size)
        plan = [
            {"stage": "patch embedding", "in_hw": IMAGE_SIZE, "out_hw": grid, "channels": dim,
             "rf": ReceptiveField().conv(patch, patch).value}
        ]
        for i in range(self.depth):
            plan.append(
                {"stage": f"block {i + 1}", "in_hw": grid, "out_hw": grid, "channels": dim,
                 "rf": ReceptiveField().whole_image().value}
            )
        return plan

    def scaled_dim(self) -> int:
        """Return ``dim * width_mult`` rounded to a multiple of ``heads`` (at least ``heads``)."""
        if not self.width_mult > 0:
            raise ConfigError(f"width_mult must be positive, got {self.width_mult}")
        scaled = self.dim * self.width_mult
        if scaled < 1:
            raise ConfigError(
                f"width_mult {self.width_mult} gives dim {scaled:.2f}, which rounds to zero; "
                f"use width_mult of at least {1 / self.dim:.3g}"
            )
        return max(self.heads, round(scaled / self.heads) * self.heads)

    def mlp_hidden(self) -> int:
        """Return the MLP hidden width, which absorbs the rounding of dim to a multiple of heads.

        A block has 4 d^2 + 8 d weights outside its MLP and (2 d + 1) h + d in it.
        The hidden width h is chosen so that a block with the rounded dim d has as many
        weights as one with the unrounded width w = dim * width_mult and h = w * mlp_ratio.
        So the parameter count follows width_mult smoothly instead of jumping at each
        multiple of heads. At a width_mult that needs no rounding, h is dim * mlp_ratio.
        """
        width = self.dim * self.width_mult
        dim = self.scaled_dim()
        target = 4 * width**2 + 9 * width + (2 * width + 1) * width * self.mlp_ratio
        return max(1, round((target - 4 * dim**2 - 9 * dim) / (2 * dim + 1)))


class PatchEmbedding(nn.Module):
    """A linear map of each non-overlapping patch, written as a convolution with stride = kernel."""

    def __init__(self, *, patch_size: int, dim: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(1, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.project(x)  # (B, dim, grid_h, grid_w)
        return x.flatten(2).transpose(1, 2)  # (B, tokens, dim)


class Attention(nn.Module):
    """Multi-head self-attention: softmax(q k^T / sqrt(d_head)) v, then an output projection."""

    def __init__(self, *, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).view(batch, tokens, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, tokens, d_head)

        scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, heads, tokens, tokens)
        weights = self.attn_dropout(scores.softmax(dim=-1))
        out = weights @ v  # (B, heads, tokens, d_head)

        out = out.transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj(out)


class FeedForward(nn.Sequential):
    def __init__(self, *, dim: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__(
            nn.Linear(dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, dim),
            nn.Dropout(dropout),
        )


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attention(LayerNorm(x)), then x + MLP(LayerNorm(x))."""

    def __init__(self, *, dim: int, heads: int, mlp_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim=dim, heads=heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim=dim, hidden_dim=mlp_dim, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        plan = config.validate()
        dim = config.scaled_dim()
        grid_h, grid_w = plan[0]["out_hw"]
        tokens = grid_h * grid_w + (1 if config.pooling == "cls" else 0)

        self.pooling = config.pooling
        self.patch_embedding = PatchEmbedding(patch_size=config.patch_size, dim=dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if config.pooling == "cls" else None
        self.pos_embedding = nn.Parameter(torch.empty(1, tokens, dim))
        nn.init.trunc_normal_(self.pos_embedding, std=0.02)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.Sequential(
            *[
                TransformerBlock(dim=dim, heads=config.heads, mlp_dim=config.mlp_hidden(), dropout=config.dropout)
                for _ in range(config.depth)
            ]
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(x)  # (B, tokens, dim)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.dropout(x + self.pos_embedding)

        x = self.norm(self.blocks(x))
        pooled = x[:, 0] if self.cls_token is not None else x.mean(dim=1)
        return self.head(pooled)
