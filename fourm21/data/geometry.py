"""Mapping predictions on the letterboxed network input back to the original image.

The letterbox scales the longest side to ``img_size`` and pads bottom/right, so one ``scale``
per image undoes it.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def unletterbox(pred: dict[str, torch.Tensor], orig_size: tuple[int, int], scale: float,
                mask_thr: float = 0.5) -> dict[str, torch.Tensor]:
    """A copy of ``pred`` with boxes, masks and the semantic map in original pixels (``orig_size`` = (h, w))."""
    h, w = orig_size
    vh, vw = round(h * scale), round(w * scale)  # the part of the input that is image, not padding
    out = dict(pred)
    if "boxes" in pred:
        boxes = pred["boxes"].float() / scale
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        out["boxes"] = boxes
    if "mask_probs" in pred:
        probs = pred["mask_probs"].float()[:, :vh, :vw]
        if (vh, vw) != (h, w) and len(probs):
            probs = F.interpolate(probs[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        elif not len(probs):
            probs = probs.new_zeros((0, h, w))
        out["mask_probs"] = probs
        out["masks"] = probs > mask_thr
    if "semantic" in pred:
        sem = pred["semantic"][:vh, :vw]
        if (vh, vw) != (h, w):
            sem = F.interpolate(sem[None, None].float(), size=(h, w), mode="nearest")[0, 0].long()
        out["semantic"] = sem
    return out
