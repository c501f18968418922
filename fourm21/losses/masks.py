"""Mask losses: prototype instance masks (YOLACT-style) and semantic segmentation.

Both are computed at the resolution the network predicts, not at the input's: the targets come
at that resolution (instance masks as coverage fractions from the data pipeline, semantic labels
reduced per cell here), which is what makes a dense step cost about what the network costs.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from fourm21.data.sample import IGNORE_INDEX
from fourm21.models.heads.semantic import DICE_CLASSES, LABEL_REDUCTIONS


def box_crop_weights(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(P, 4) xyxy boxes in mask pixels -> (P, height, width) float, 1 inside each box."""
    ys = torch.arange(height, device=boxes.device, dtype=boxes.dtype)[None, :, None] + 0.5
    xs = torch.arange(width, device=boxes.device, dtype=boxes.dtype)[None, None, :] + 0.5
    x0, y0, x1, y1 = (boxes[:, k, None, None] for k in range(4))
    return ((xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)).to(boxes.dtype)


def mask_targets_at(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(P, h, w) bool or coverage masks -> (P, *size) float targets.

    Masks already at ``size`` (the data pipeline makes them at the prototype resolution) pass through;
    others (e.g. full-resolution masks) are resized bilinearly, as the loss always did.
    """
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks.float()
    return F.interpolate(masks[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def prototype_mask_loss(proto: torch.Tensor, coefs: torch.Tensor, matched: torch.Tensor, gt_masks: torch.Tensor,
                        gt_boxes: torch.Tensor, valid: torch.Tensor, image_size: tuple[int, int],
                        max_pos: int = 512, dice_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """Per positive location: BCE + dice of sigmoid(coef . proto) against its box's mask, inside the box.

    proto (B, K, Hp, Wp); coefs (B, L, K); matched (B, L) from the detection assignment;
    gt_masks (B, M, h, w) coverage in [0, 1] (or bool), ideally at (Hp, Wp); gt_boxes (B, M, 4) in image
    pixels; valid (B,) samples with masks.
    """
    proto, coefs = proto.float(), coefs.float()
    pos = (matched >= 0) & valid[:, None]
    bi, li = pos.nonzero(as_tuple=True)
    if len(bi) == 0:
        return {"bce": proto.sum() * 0.0 + coefs.sum() * 0.0, "dice": proto.sum() * 0.0}
    if len(bi) > max_pos:  # bound memory on crowded batches; a random subset is an unbiased estimate
        sel = torch.randperm(len(bi), device=bi.device)[:max_pos].sort().values  # kept in image order
        bi, li = bi[sel], li[sel]
    gi = matched[bi, li]
    hp, wp = proto.shape[-2:]
    # one (P_b, K) @ (K, Hp*Wp) product per image, instead of copying each positive's image's prototypes
    counts = torch.bincount(bi, minlength=proto.shape[0]).tolist()
    sel_coefs = coefs[bi, li].split(counts)
    protos = proto.flatten(2).unbind(0)  # one gradient buffer for all images (indexing per image makes B)
    pred = torch.cat([c @ protos[b] for b, c in enumerate(sel_coefs) if len(c)]).view(-1, hp, wp)
    target = mask_targets_at(gt_masks[bi, gi], (hp, wp))
    h, w = image_size
    boxes = gt_boxes[bi, gi] * torch.tensor([wp / w, hp / h, wp / w, hp / h], device=proto.device)
    crop = box_crop_weights(boxes, hp, wp)
    area = crop.sum((1, 2)).clamp(min=1.0)
    bce = (F.binary_cross_entropy_with_logits(pred, target, reduction="none") * crop).sum((1, 2)) / area
    prob = pred.sigmoid() * crop
    inter = (prob * target).sum((1, 2))
    dice = 1 - (2 * inter + 1) / (prob.sum((1, 2)) + (target * crop).sum((1, 2)) + 1)
    return {"bce": bce.mean(), "dice": dice_weight * dice.mean()}


def reduce_labels(target: torch.Tensor, stride: int, num_classes: int, mode: str = "majority") -> torch.Tensor:
    """(B, H, W) labels -> (B, ceil(H/s), ceil(W/s)): one label per s x s cell.

    ``nearest`` takes the cell's centre pixel; ``majority`` its most frequent valid label (IGNORE_INDEX
    only where the whole cell is ignored), so thin objects covering much of a cell are not lost.
    """
    if mode not in LABEL_REDUCTIONS:
        raise ValueError(f"label reduction must be one of {LABEL_REDUCTIONS}, got '{mode}'")
    if stride == 1:
        return target
    b, h, w = target.shape
    gh, gw = -(-h // stride), -(-w // stride)
    padded = F.pad(target, (0, gw * stride - w, 0, gh * stride - h), value=IGNORE_INDEX)
    if mode == "nearest":
        c = stride // 2
        return padded[:, c::stride, c::stride].contiguous()
    cells = padded.view(b, gh, stride, gw, stride).permute(0, 1, 3, 2, 4).reshape(b, gh * gw, stride * stride)
    cells = torch.where(cells == IGNORE_INDEX, torch.full_like(cells, num_classes), cells.clamp(max=num_classes))
    counts = torch.zeros(b, gh * gw, num_classes + 1, device=target.device, dtype=torch.int32)
    counts.scatter_add_(2, cells, torch.ones_like(cells, dtype=torch.int32))
    best_count, label = counts[..., :num_classes].max(-1)
    label = torch.where(best_count > 0, label, torch.full_like(label, IGNORE_INDEX))
    return label.view(b, gh, gw)


def semantic_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, dice_weight: float = 0.5,
                  loss_stride: int = 1, label_reduction: str = "majority",
                  dice_classes: str = "present") -> dict[str, torch.Tensor]:
    """Cross-entropy (+ soft dice) of (B, C, h, w) logits against the (B, H, W) target, on an (H/s, W/s) grid.

    ``loss_stride`` s = 1 upsamples the logits to the full target (exact, and the most costly: C x H x W
    per image); s = the logits' own stride compares them as predicted, with the labels reduced per cell
    (``reduce_labels``). Dice sums count each cell as its s x s pixels, so block-constant targets give
    the same loss at every s. ``dice_classes``: ``present`` scores the classes found in the batch's
    targets (absent classes are left to the cross-entropy), ``all`` every class.
    """
    if dice_classes not in DICE_CLASSES:
        raise ValueError(f"dice_classes must be one of {DICE_CLASSES}, got '{dice_classes}'")
    num_classes = logits.shape[1]
    target = reduce_labels(target[valid].long(), loss_stride, num_classes, label_reduction)
    logits = logits[valid].float()
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    ce = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
    out = {"ce": ce}
    if dice_weight > 0:
        cell = float(loss_stride * loss_stride)
        keep = (target != IGNORE_INDEX)[:, None].float()
        prob = logits.softmax(1) * keep
        onehot = F.one_hot(target.clamp(max=num_classes - 1), num_classes).permute(0, 3, 1, 2).float() * keep
        inter, p_sum, t_sum = ((x * cell).sum((0, 2, 3)) for x in (prob * onehot, prob, onehot))
        dice = 1 - (2 * inter + 1) / (p_sum + t_sum + 1)
        if dice_classes == "present":
            present = t_sum > 0
            dice = dice[present] if present.any() else dice.sum(0, keepdim=True) * 0.0
        out["dice"] = dice_weight * dice.mean()
    return out
