"""Semi-supervised training with pseudo-labels: a teacher labels unlabelled images, the student learns them.

The teacher (an exponential moving average of the student, or the student itself) predicts on a
weak view of each unlabelled image; predictions above the confidence thresholds of ``semi.thresholds``
become targets in the ordinary batch format, with task masks, so the heads' own losses train on
them. The student sees a photometrically jittered copy of the same view, so boxes and masks stay
aligned while the two views still differ (FixMatch / Mean Teacher / Unbiased Teacher style).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.nn import functional as F

from fourm21.data.coco import mask_coverage
from fourm21.data.sample import IGNORE_INDEX


def photometric_jitter(images: torch.Tensor, strength: float, generator: torch.Generator | None = None
                       ) -> torch.Tensor:
    """(B, 3, H, W) normalised images -> per-image random contrast, brightness, channel gain and noise.

    Pixel-aligned, so the teacher's boxes and masks are valid targets for the jittered copy.
    """
    if strength <= 0:
        return images
    b = images.shape[0]

    def uniform(*shape: int) -> torch.Tensor:
        return (torch.rand(*shape, generator=generator) * 2 - 1).to(images.device, images.dtype)

    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    contrast = 1 + strength * uniform(b, 1, 1, 1)
    brightness = strength * uniform(b, 1, 1, 1)
    gain = 1 + 0.5 * strength * uniform(b, 3, 1, 1)
    noise = 0.1 * strength * torch.randn(images.shape, generator=generator).to(images.device, images.dtype)
    return (images - mean) * contrast * gain + mean + brightness + noise


@torch.no_grad()
def pseudo_targets(outputs: Mapping[str, Any], preds: list[dict[str, torch.Tensor]], batch: dict[str, Any],
                   thresholds: Mapping[str, float]) -> dict[str, Any]:
    """Fill ``batch`` (collated unlabelled images) with the teacher's confident predictions.

    outputs: the teacher's raw outputs; preds: its ``postprocess`` of them (same image size as the batch).
    Per task: ``cls`` the top class if its probability >= thresholds.cls; ``det``/``inst`` the boxes
    (and masks) scoring >= thresholds.det, and an image with none counts as background only;
    ``sem`` per-pixel argmax where the probability >= thresholds.sem (other pixels ignored);
    ``attr`` per group the top value if >= thresholds.attr (else missing); ``mlc`` the label set
    when every class is confidently in or out (p >= thr or p <= 1 - thr).
    Returns the batch with targets and task masks set; ``pseudo/*`` counts are in ``batch["pseudo_stats"]``.
    """
    images = batch["image"]
    b, _, h, w = images.shape
    device = images.device
    stats: dict[str, float] = {}
    if "cls" in outputs:
        probs = torch.stack([p["class_probs"] for p in preds])
        conf, label = probs.max(dim=1)
        batch["has_label"] = conf >= thresholds.get("cls", 0.9)
        batch["label"] = torch.where(batch["has_label"], label, torch.full_like(label, -1))
        stats["pseudo/cls_frac"] = batch["has_label"].float().mean().item()
    if "det" in outputs:
        thr = thresholds.get("det", 0.5)
        keep = [p["scores"] >= thr for p in preds]
        m = max([int(k.sum()) for k in keep] + [1])
        gt_boxes = torch.zeros(b, m, 4, device=device)
        gt_labels = torch.full((b, m), -1, dtype=torch.long, device=device)
        # mask targets at the prototype resolution, as the data pipeline makes them (``mask_coverage``)
        proto = outputs["inst"].get("proto") if "inst" in outputs else None
        stride = h // proto.shape[-2] if proto is not None else 1
        gt_masks = mask_coverage(torch.zeros(b * m, h, w, dtype=torch.bool, device=device), stride)
        gt_masks = gt_masks.view(b, m, *gt_masks.shape[-2:])
        for i, (p, k) in enumerate(zip(preds, keep)):
            n = int(k.sum())
            gt_boxes[i, :n] = p["boxes"][k]
            gt_labels[i, :n] = p["labels"][k]
            if "masks" in p and n:
                gt_masks[i, :n] = mask_coverage(p["masks"][k], stride)
        batch.update(gt_boxes=gt_boxes, gt_labels=gt_labels, gt_masks=gt_masks,
                     has_boxes=torch.ones(b, dtype=torch.bool, device=device),
                     has_masks=torch.full((b,), "inst" in outputs, dtype=torch.bool, device=device))
        stats["pseudo/boxes_per_image"] = sum(int(k.sum()) for k in keep) / max(b, 1)
    if "sem" in outputs:
        logits = F.interpolate(outputs["sem"]["logits"].float(), size=(h, w), mode="bilinear", align_corners=False)
        conf, label = logits.softmax(1).max(1)
        confident = conf >= thresholds.get("sem", 0.8)
        batch["semantic"] = torch.where(confident, label, torch.full_like(label, IGNORE_INDEX))
        batch["has_semantic"] = torch.ones(b, dtype=torch.bool, device=device)
        stats["pseudo/sem_pixel_frac"] = confident.float().mean().item()
    if "attr" in outputs:
        thr = thresholds.get("attr", 0.9)
        attributes = {}
        for g, logits in outputs["attr"].items():
            conf, label = logits.float().softmax(-1).max(-1)
            attributes[g] = torch.where(conf >= thr, label, torch.full_like(label, -1))
        batch["attributes"] = attributes
        batch["has_attributes"] = torch.ones(b, dtype=torch.bool, device=device)
    if "mlc" in outputs:
        thr = thresholds.get("mlc", 0.9)
        probs = outputs["mlc"]["logits"].float().sigmoid()
        batch["labels"] = (probs >= 0.5).float()
        batch["has_labels"] = ((probs >= thr) | (probs <= 1 - thr)).all(dim=1)
        stats["pseudo/mlc_frac"] = batch["has_labels"].float().mean().item()
    batch["pseudo_stats"] = stats
    return batch
