"""Image-level features for the image-level heads: every backbone level, projected and pooled."""

from __future__ import annotations

import torch
from torch import nn

from fourm21.models.neck import conv_norm_act


class MultiScalePool(nn.Module):
    """[(B, C_i, H_i, W_i)] -> (B, out_channels).

    Each level goes through a non-linear 1x1 projection before average pooling: a bag of local
    features sees texture at every scale, which a freshly initialised ConvNeXt (layer scale ~0,
    nearly linear) does not give in its pooled top map alone.
    """

    def __init__(self, in_channels: list[int], hidden: int = 256, levels: list[int] | None = None,
                 norm: str = "group") -> None:
        super().__init__()
        self.levels = list(levels) if levels is not None else list(range(len(in_channels)))
        width = max(hidden // len(self.levels), 8)
        self.pre = nn.ModuleList(conv_norm_act(in_channels[i], width, k=1, norm=norm) for i in self.levels)
        self.out_channels = width * len(self.levels)
        self.norm = nn.LayerNorm(self.out_channels)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        pooled = torch.cat([pre(feats[i]).mean(dim=(2, 3)) for pre, i in zip(self.pre, self.levels)], dim=1)
        return self.norm(pooled)
