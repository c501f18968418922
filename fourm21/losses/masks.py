"""Mask losses: prototype instance masks (YOLACT-style) and semantic segmentation."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from fourm21.data.sample import IGNORE_INDEX


def box_crop_weights(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(P, 4) xyxy boxes in mask pixels -> (P, height, width) float, 1 inside each box."""
    ys = torch.arange(height, device=boxes.device, dtype=boxes.dtype)[None, :, None] + 0.5
    xs = torch.arange(width, device=boxes.device, dtype=boxes.dtype)[None, None, :] + 0.5
    x0, y0, x1, y1 = (boxes[:, k, None, None] for k in range(4))
    return ((xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)).to(boxes.dtype)


def prototype_mask_loss(proto: torch.Tensor, coefs: torch.Tensor, matched: torch.Tensor, gt_masks: torch.Tensor,
                        gt_boxes: torch.Tensor, valid: torch.Tensor, image_size: tuple[int, int],
                        max_pos: int = 512, dice_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """Per positive location: BCE + dice of sigmoid(coef . proto) against its box's mask, inside the box.

    proto (B, K, Hp, Wp); coefs (B, L, K); matched (B, L) from the detection assignment;
    gt_masks (B, M, H, W) bool; gt_boxes (B, M, 4) in image pixels; valid (B,) samples with masks.
    """
    proto, coefs = proto.float(), coefs.float()
    pos = (matched >= 0) & valid[:, None]
    bi, li = pos.nonzero(as_tuple=True)
    if len(bi) == 0:
        return {"bce": proto.sum() * 0.0 + coefs.sum() * 0.0, "dice": proto.sum() * 0.0}
    if len(bi) > max_pos:  # bound memory on crowded batches; a random subset is an unbiased estimate
        sel = torch.randperm(len(bi), device=bi.device)[:max_pos]
        bi, li = bi[sel], li[sel]
    gi = matched[bi, li]
    hp, wp = proto.shape[-2:]
    pred = torch.einsum("pk,pkhw->phw", coefs[bi, li], proto[bi])
    target = F.interpolate(gt_masks[bi, gi][:, None].float(), size=(hp, wp), mode="bilinear",
                           align_corners=False)[:, 0]
    h, w = image_size
    boxes = gt_boxes[bi, gi] * torch.tensor([wp / w, hp / h, wp / w, hp / h], device=proto.device)
    crop = box_crop_weights(boxes, hp, wp)
    area = crop.sum((1, 2)).clamp(min=1.0)
    bce = (F.binary_cross_entropy_with_logits(pred, target, reduction="none") * crop).sum((1, 2)) / area
    prob = pred.sigmoid() * crop
    inter = (prob * target).sum((1, 2))
    dice = 1 - (2 * inter + 1) / (prob.sum((1, 2)) + (target * crop).sum((1, 2)) + 1)
    return {"bce": bce.mean(), "dice": dice_weight * dice.mean()}


def semantic_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                  dice_weight: float = 0.5) -> dict[str, torch.Tensor]:
    """Cross-entropy (+ soft dice) of (B, C, h, w) logits, upsampled to the (B, H, W) target."""
    logits = F.interpolate(logits[valid].float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
    target = target[valid]
    ce = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
    out = {"ce": ce}
    if dice_weight > 0:
        keep = (target != IGNORE_INDEX)[:, None].float()
        prob = logits.softmax(1) * keep
        onehot = F.one_hot(target.clamp(max=logits.shape[1] - 1), logits.shape[1]).permute(0, 3, 1, 2).float() * keep
        inter = (prob * onehot).sum((0, 2, 3))
        dice = 1 - (2 * inter + 1) / (prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3)) + 1)
        out["dice"] = dice_weight * dice.mean()
    return out
