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
                 dice_weight: float = 0.5, label_stride: int = 1) -> None:
        super().__init__()
        if label_stride < 1:
            raise ValueError(f"heads.sem.label_stride must be >= 1, got {label_stride}")
        self.strides = list(strides)
        self.label_stride = label_stride
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
        labels = semantic_labels(outputs[self.name]["logits"], image_size, self.label_stride)
        for i, p in enumerate(preds):
            p["semantic"] = labels[i]


def semantic_labels(logits: torch.Tensor, size: tuple[int, int], label_stride: int = 1) -> torch.Tensor:
    """(B, C, h, w) logits -> (B, H, W) argmax of the bilinearly upsampled logits.

    With ``label_stride`` s > 1 the argmax is taken on an (H/s, W/s) grid, at the centres of s x s
    pixel cells, and each cell repeats its label: (C x H x W) upsampled logits cost more on a CPU than
    the lite network's forward pass, and logits predicted at stride >= 4 hold little finer detail.
    """
    h, w = size
    s = label_stride
    grid = (-(-h // s), -(-w // s))
    # channels-last: upsampling and the argmax over classes read contiguous memory (about 3x faster)
    up = F.interpolate(logits.float().contiguous(memory_format=torch.channels_last), size=grid, mode="bilinear",
                       align_corners=False)
    labels = up.argmax(1)
    if s > 1:
        labels = labels.repeat_interleave(s, 1).repeat_interleave(s, 2)[:, :h, :w]
    return labels
