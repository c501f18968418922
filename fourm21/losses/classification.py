"""Image classification loss."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def softmax_ce_loss(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of (N, K) logits against (N,) class ids."""
    return F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)
