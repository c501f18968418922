"""Anchor-free (FCOS-style) detection head: per-location class scores, box distances, centerness."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from fourm21.models.heads.base import Head
from fourm21.models.neck import SharedTower


def make_points(shapes: list[tuple[int, int]], strides: list[int], device: torch.device,
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Location centres (L, 2) in pixels and their strides (L,), levels concatenated finest first."""
    pts, strd = [], []
    for (h, w), s in zip(shapes, strides):
        ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=dtype),
                                torch.arange(w, device=device, dtype=dtype), indexing="ij")
        pts.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], -1).add(0.5).mul(s))
        strd.append(torch.full((h * w,), float(s), device=device, dtype=dtype))
    return torch.cat(pts), torch.cat(strd)


class DetectionHead(Head):
    """Shared towers over the levels at ``strides``; decoded with ``torchvision.ops.batched_nms``."""


    def __init__(self, in_channels: int, num_classes: int, strides: list[int], num_convs: int = 2,
                 prior_prob: float = 0.01, range_mult: float = 4.0, center_radius: float = 1.5,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, score_thr: float = 0.05,
                 iou_thr: float = 0.6, max_det: int = 100, pre_nms_topk: int = 1000, separable: bool = False,
                 pred_kernel: int = 3, norm: str = "group") -> None:
        super().__init__()
        self.num_classes = num_classes
        self.strides = list(strides)
        self.range_mult = range_mult
        self.center_radius = center_radius
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.score_thr, self.iou_thr, self.max_det, self.pre_nms_topk = score_thr, iou_thr, max_det, pre_nms_topk
        c = in_channels
        self.cls_tower = SharedTower(c, num_convs, len(self.strides), separable, norm)
        self.reg_tower = SharedTower(c, num_convs, len(self.strides), separable, norm)
        k = pred_kernel
        self.cls_pred = nn.Conv2d(c, num_classes, k, padding=k // 2)
        self.box_pred = nn.Conv2d(c, 4, k, padding=k // 2)
        self.ctr_pred = nn.Conv2d(c, 1, k, padding=k // 2)
        self.scales = nn.Parameter(torch.ones(len(self.strides)))
        nn.init.constant_(self.cls_pred.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """feats at ``strides`` -> cls_logits (B, L, C), box_ltrb (B, L, 4) pixels, centerness (B, L),
        points (L, 2), point_strides (L,)."""
        cls, box, ctr = [], [], []
        for i, (f, s) in enumerate(zip(feats, self.strides)):
            ct, rt = self.cls_tower(f, i), self.reg_tower(f, i)
            cls.append(self.cls_pred(ct).flatten(2).transpose(1, 2))
            box.append((F.softplus(self.box_pred(rt) * self.scales[i]) * s).flatten(2).transpose(1, 2))
            ctr.append(self.ctr_pred(rt).flatten(1))
        points, strides = make_points([f.shape[-2:] for f in feats], self.strides, feats[0].device)
        return {"cls_logits": torch.cat(cls, 1), "box_ltrb": torch.cat(box, 1), "centerness": torch.cat(ctr, 1),
                "points": points, "point_strides": strides}
