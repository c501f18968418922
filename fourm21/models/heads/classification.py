"""Softmax image classification from pooled multi-scale backbone features."""

from __future__ import annotations

import torch
from torch import nn

from fourm21.models.heads.base import Head
from fourm21.models.heads.pooling import MultiScalePool


class ClassificationHead(Head):
    source = "backbone"
    fusion_context = True  # the fusion reads its class probabilities

    def __init__(self, in_channels: list[int], num_classes: int, hidden: int = 256, levels: list[int] | None = None,
                 dropout: float = 0.0, label_smoothing: float = 0.0, topk: int = 5, norm: str = "group") -> None:
        super().__init__()
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.topk = topk
        self.pool = MultiScalePool(in_channels, hidden, levels, norm)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(self.pool.out_channels, num_classes)

    def forward(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Backbone levels [(B, C_i, H_i, W_i)] -> logits (B, K)."""
        return {"logits": self.fc(self.drop(self.pool(feats)))}
