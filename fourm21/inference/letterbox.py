"""Mapping predictions on the letterboxed network input back to the original image.

The letterbox scales the longest side to ``img_size`` and pads bottom/right, so one ``scale``
per image undoes it.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from fourm21.inference.masks import paste_masks


def unletterbox(pred: dict[str, torch.Tensor], orig_size: tuple[int, int], scale: float,
                mask_thr: float = 0.5) -> dict[str, torch.Tensor]:
    """A copy of ``pred`` with boxes, masks and the semantic map in original pixels (``orig_size`` = (h, w)).

    Masks come from ``mask_logits`` (prototype resolution, spanning the network input) where present,
    else from the input-size ``masks`` (bilinear, then > 0.5)."""
    h, w = orig_size
    vh, vw = round(h * scale), round(w * scale)  # the part of the input that is image, not padding
    out = dict(pred)
    if "boxes" in pred:
        boxes = pred["boxes"].float() / scale
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        out["boxes"] = boxes
    if "mask_logits" in pred and "masks" in pred and "boxes" in pred:
        # re-assembled from the prototype-resolution logits straight at the original size: one
        # interpolation, not upsample-to-input then resize
        in_h, in_w = pred["masks"].shape[-2:]  # the network input, which the prototypes span
        lh, lw = pred["mask_logits"].shape[-2:]
        out["masks"] = paste_masks(pred["mask_logits"], out["boxes"], (h, w),
                                   scale=(lh / in_h * vh / h, lw / in_w * vw / w), threshold=mask_thr)
    elif "masks" in pred:
        masks = pred["masks"][:, :vh, :vw]
        if (vh, vw) != (h, w):
            masks = F.interpolate(masks[:, None].float(), size=(h, w), mode="bilinear", align_corners=False)[:, 0] \
                > 0.5 if len(masks) else masks.new_zeros((0, h, w))
        out["masks"] = masks
    if "semantic" in pred:
        sem = pred["semantic"][:vh, :vw]
        if (vh, vw) != (h, w):
            sem = F.interpolate(sem[None, None].float(), size=(h, w), mode="nearest")[0, 0].long()
        out["semantic"] = sem
    return out


def to_original_pixels(pred: dict[str, torch.Tensor], meta: dict, mask_thr: float = 0.5) -> dict[str, torch.Tensor]:
    """``unletterbox`` by a sample's ``meta`` (``orig_size``, ``scale``): what the evaluator's COCO scoring takes."""
    return unletterbox(pred, meta["orig_size"], float(meta.get("scale", 1.0)), mask_thr)
