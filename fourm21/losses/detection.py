"""FCOS-style target assignment and detection loss, vectorised over images and objects.

Assignment: a location is positive for a ground-truth box when it lies inside the box, within
``radius`` strides of the box centre, and the box's largest ltrb distance falls in the
location's level range; among several candidates the smallest box wins.
Loss: sigmoid focal loss on classes, GIoU on boxes weighted by centerness, BCE on centerness.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss


def level_ranges(strides: list[int], range_mult: float) -> list[tuple[float, float]]:
    """Per level (lo, hi] of the max ltrb distance it is responsible for."""
    bounds = [0.0] + [s * range_mult for s in strides[:-1]] + [float("inf")]
    return [(bounds[i], bounds[i + 1]) for i in range(len(strides))]


def decode_ltrb(points: torch.Tensor, ltrb: torch.Tensor) -> torch.Tensor:
    """points (..., 2) and distances (..., 4) -> xyxy boxes (..., 4)."""
    return torch.cat([points - ltrb[..., :2], points + ltrb[..., 2:]], dim=-1)


@torch.no_grad()
def fcos_assign(points: torch.Tensor, ranges: torch.Tensor, strides: torch.Tensor, gt_boxes: torch.Tensor,
                gt_labels: torch.Tensor, radius: float = 1.5) -> torch.Tensor:
    """Match locations to boxes.

    points (L, 2), ranges (L, 2), strides (L,), gt_boxes (B, M, 4), gt_labels (B, M) with -1 = padding.
    Returns matched (B, L): index into M, or -1 for background.
    """
    px, py = points[None, :, None, 0], points[None, :, None, 1]  # (1, L, 1)
    x0, y0, x1, y1 = (gt_boxes[:, None, :, k] for k in range(4))  # (B, 1, M)
    ltrb = torch.stack([px - x0, py - y0, x1 - px, y1 - py], dim=-1)  # (B, L, M, 4)
    inside = ltrb.amin(-1) > 0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    rad = strides[None, :, None] * radius
    in_center = ((px - torch.maximum(cx - rad, x0)) > 0) & ((torch.minimum(cx + rad, x1) - px) > 0) & \
                ((py - torch.maximum(cy - rad, y0)) > 0) & ((torch.minimum(cy + rad, y1) - py) > 0)
    max_d = ltrb.amax(-1)
    in_range = (max_d > ranges[None, :, None, 0]) & (max_d <= ranges[None, :, None, 1])
    ok = inside & in_center & in_range & (gt_labels[:, None, :] >= 0)
    area = ((x1 - x0) * (y1 - y0)).expand_as(ok).clone()
    area[~ok] = float("inf")
    min_area, idx = area.min(-1)
    return torch.where(torch.isfinite(min_area), idx, torch.full_like(idx, -1))


def centerness_target(ltrb: torch.Tensor) -> torch.Tensor:
    """(P, 4) ltrb distances -> (P,) FCOS centerness in [0, 1]."""
    lr, tb = ltrb[:, [0, 2]], ltrb[:, [1, 3]]
    c = (lr.amin(-1) / lr.amax(-1).clamp(min=1e-6)) * (tb.amin(-1) / tb.amax(-1).clamp(min=1e-6))
    return c.clamp(min=0).sqrt()


def fcos_loss(cls_logits: torch.Tensor, box_ltrb: torch.Tensor, centerness: torch.Tensor, points: torch.Tensor,
              matched: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor, valid: torch.Tensor,
              focal_alpha: float = 0.25, focal_gamma: float = 2.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Detection losses (classification, box, centerness) over the images flagged in ``valid`` (B,).

    cls_logits (B, L, C), box_ltrb (B, L, 4) in pixels, centerness (B, L), matched (B, L).
    """
    cls_logits, box_ltrb, centerness = cls_logits.float(), box_ltrb.float(), centerness.float()
    b, n_loc, n_cls = cls_logits.shape
    pos = (matched >= 0) & valid[:, None]
    num_pos = pos.sum().clamp(min=1).float()
    bi, li = pos.nonzero(as_tuple=True)
    gi = matched[bi, li]
    target = torch.zeros_like(cls_logits)
    target[bi, li, gt_labels[bi, gi]] = 1.0
    cls_loss = sigmoid_focal_loss(cls_logits[valid], target[valid], focal_alpha, focal_gamma, reduction="sum") / num_pos
    if len(bi) == 0:
        zero = (box_ltrb.sum() + centerness.sum()) * 0.0
        return cls_loss, zero, zero
    pts = points[li]
    gt = gt_boxes[bi, gi]
    gt_ltrb = torch.cat([pts - gt[:, :2], gt[:, 2:] - pts], dim=-1)
    ctr_t = centerness_target(gt_ltrb)
    pred_boxes = decode_ltrb(pts, box_ltrb[bi, li])
    giou = generalized_box_iou_loss(pred_boxes, gt, reduction="none")
    box_loss = (giou * ctr_t).sum() / ctr_t.sum().clamp(min=1e-6)
    ctr_loss = F.binary_cross_entropy_with_logits(centerness[bi, li], ctr_t, reduction="sum") / num_pos
    return cls_loss, box_loss, ctr_loss
