"""Semantic segmentation: Panoptic-FPN-style merge of all neck levels at the finest stride."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fourm21.errors import ConfigError
from fourm21.models.heads.base import Head
from fourm21.models.neck import conv_norm_act

LABEL_REDUCTIONS = ("nearest", "majority")  # label_reduction: how ``semantic_loss`` reduces labels per loss cell
DICE_CLASSES = ("present", "all")  # dice_classes: the classes ``semantic_loss``'s dice scores


class SemanticHead(Head):
    """Logits (B, C + 1, H/s0, W/s0): the C thing classes plus background (index 0).

    The loss is taken on an (H/loss_stride, W/loss_stride) grid (see ``fourm21.losses.masks.semantic_loss``);
    at ``loss_stride`` = s0 the logits are compared as predicted, with the labels reduced per cell.
    """


    def __init__(self, in_channels: int, num_classes: int, strides: list[int], channels: int = 64,
                 dice_weight: float = 0.5, label_stride: int = 1, loss_stride: int = 1,
                 label_reduction: str = "majority", dice_classes: str = "present", separable: bool = False,
                 norm: str = "group") -> None:
        super().__init__()
        if label_stride < 1:
            raise ConfigError(f"model.heads.sem.label_stride must be >= 1, got {label_stride}")
        if not isinstance(loss_stride, int) or loss_stride < 1:
            raise ConfigError(f"model.heads.sem.loss_stride must be an integer >= 1, got {loss_stride}")
        if label_reduction not in LABEL_REDUCTIONS:
            raise ConfigError(f"model.heads.sem.label_reduction must be one of {LABEL_REDUCTIONS}, "
                              f"got '{label_reduction}'")
        if dice_classes not in DICE_CLASSES:
            raise ConfigError(f"model.heads.sem.dice_classes must be one of {DICE_CLASSES}, got '{dice_classes}'")
        self.loss_stride, self.label_reduction, self.dice_classes = loss_stride, label_reduction, dice_classes
        self.strides = list(strides)
        self.label_stride = label_stride
        self.num_classes = num_classes + 1
        self.dice_weight = dice_weight
        self.lateral = nn.ModuleList(conv_norm_act(in_channels, channels, separable=separable, norm=norm)
                                     for _ in strides)
        self.fuse = conv_norm_act(channels, channels, separable=separable, norm=norm)
        self.pred = nn.Conv2d(channels, self.num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        size = feats[0].shape[-2:]
        x = sum(F.interpolate(lat(f), size=size, mode="bilinear", align_corners=False) if f.shape[-2:] != size
                else lat(f) for lat, f in zip(self.lateral, feats))
        return {"logits": self.pred(self.fuse(x))}
