"""Cross-task fusion: the image-level context modulates the dense features the other heads see.

The context is the pooled top backbone feature plus an embedding of the classification head's
class probabilities; an MLP turns it into per-level FiLM parameters (scale, shift). The last
layer starts at zero, so fusion begins as identity and learns how much to inform detection and
masks. ``enabled=False`` makes it identity, so its effect can be measured.
"""

from __future__ import annotations

import torch
from torch import nn


class ContextFusion(nn.Module):
    def __init__(self, context_channels: int, feature_channels: int, num_levels: int, num_classes: int = 0,
                 hidden: int = 128, enabled: bool = True) -> None:
        super().__init__()
        self.enabled = enabled
        self.num_levels = num_levels
        self.feature_channels = feature_channels
        self.class_embed = nn.Linear(num_classes, hidden, bias=False) if num_classes else None
        self.context = nn.Sequential(nn.Linear(context_channels, hidden), nn.SiLU())
        self.film = nn.Linear(hidden, 2 * feature_channels * num_levels)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, feats: list[torch.Tensor], top: torch.Tensor,
                cls_logits: torch.Tensor | None = None) -> list[torch.Tensor]:
        """feats: list of (B, C, H_i, W_i); top: (B, C_top, h, w); cls_logits: (B, K) or None."""
        if not self.enabled:
            return feats
        ctx = self.context(top.mean(dim=(2, 3)))
        if self.class_embed is not None and cls_logits is not None:
            ctx = ctx + self.class_embed(cls_logits.softmax(-1))
        params = self.film(ctx).view(-1, self.num_levels, 2, self.feature_channels)
        out = []
        for i, f in enumerate(feats):
            scale, shift = params[:, i, 0, :, None, None], params[:, i, 1, :, None, None]
            out.append(f * (1 + torch.tanh(scale)) + shift)
        return out
