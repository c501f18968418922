"""Multi-attribute classification: one softmax head per attribute group on shared pooled features.

Groups come from config (``groups: {colour: 5, season: 4}``), so adding or removing an attribute
is one config line. A group's loss uses only the images where that attribute is known.
"""

from __future__ import annotations

import torch
from torch import nn

from fourm21.errors import ConfigError
from fourm21.models.heads.base import Head
from fourm21.models.heads.pooling import MultiScalePool


class AttributeHead(Head):
    source = "backbone"

    def __init__(self, in_channels: list[int], groups: dict[str, int], hidden: int = 256, dropout: float = 0.0,
                 label_smoothing: float = 0.0, norm: str = "group") -> None:
        super().__init__()
        if not groups:
            raise ConfigError("model.heads.attr.groups: the attribute head needs at least one group")
        self.groups = {str(g): int(n) for g, n in groups.items()}
        self.label_smoothing = label_smoothing
        self.pool = MultiScalePool(in_channels, hidden, norm=norm)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.ModuleDict({g: nn.Linear(self.pool.out_channels, n) for g, n in self.groups.items()})

    def forward(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """-> {group: logits (B, K_group)}."""
        x = self.drop(self.pool(feats))
        return {g: fc(x) for g, fc in self.fc.items()}
