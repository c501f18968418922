"""Semantic segmentation: Panoptic-FPN-style merge of all neck levels at the finest stride."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from fourm21.losses.masks import semantic_loss
from fourm21.models.heads.base import Head
from fourm21.models.neck import conv_norm_act


class SemanticHead(Head):
    """Logits (B, C + 1, H/s0, W/s0): the C thing classes plus background (index 0)."""

    name = "sem"

    def __init__(self, in_channels: int, num_classes: int, strides: list[int], channels: int = 64,
                 dice_weight: float = 0.5) -> None:
        super().__init__()
        self.strides = list(strides)
        self.num_classes = num_classes + 1
        self.dice_weight = dice_weight
        self.lateral = nn.ModuleList(conv_norm_act(in_channels, channels) for _ in strides)
        self.fuse = conv_norm_act(channels, channels)
        self.pred = nn.Conv2d(channels, self.num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        size = feats[0].shape[-2:]
        x = sum(F.interpolate(lat(f), size=size, mode="bilinear", align_corners=False) if f.shape[-2:] != size
                else lat(f) for lat, f in zip(self.lateral, feats))
        return {"logits": self.pred(self.fuse(x))}

    def loss(self, outputs: dict, batch: dict[str, Any], cache: dict) -> dict[str, torch.Tensor]:
        valid = batch["has_semantic"]
        if not valid.any():
            return {}
        return semantic_loss(outputs[self.name]["logits"], batch["semantic"], valid, self.dice_weight)

    @torch.no_grad()
    def postprocess(self, outputs: dict, preds: list[dict], image_size: tuple[int, int]) -> None:
        """Adds semantic (H, W) int64 class map."""
        logits = F.interpolate(outputs[self.name]["logits"].float(), size=image_size, mode="bilinear",
                               align_corners=False)
        labels = logits.argmax(1)
        for i, p in enumerate(preds):
            p["semantic"] = labels[i]
