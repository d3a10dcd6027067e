"""Loss and class probabilities from a model's output, for the shared training engine.

Most models return logits: cross-entropy trains them and softmax reads them.
A model with another output (CapsNet returns capsule lengths and trains with a
margin loss) defines ``loss_and_scores`` and ``probabilities`` methods, and the
training loop, evaluation, Compare and Draw pick them up from here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def loss_and_scores(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, label_smoothing: float = 0.0, reduction: str = "mean"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the training loss (float32) and the class scores (B, 10) whose argmax is the prediction."""
    custom = getattr(model, "loss_and_scores", None)
    if custom is not None:
        return custom(x, y, label_smoothing=label_smoothing, reduction=reduction)
    scores = model(x)
    loss = F.cross_entropy(scores.float(), y, label_smoothing=label_smoothing, reduction=reduction)
    return loss, scores


def probabilities(model: nn.Module, scores: torch.Tensor) -> torch.Tensor:
    """Turn class scores from ``model`` into probabilities (B, 10) that sum to 1."""
    custom = getattr(model, "probabilities", None)
    if custom is not None:
        return custom(scores)
    return torch.softmax(scores.float(), dim=1)
