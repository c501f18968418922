"""Mapping predictions on the letterboxed network input back to the original image.

The letterbox scales the longest side to ``img_size`` and pads bottom/right, so one ``scale`` per image
undoes it; each task maps its own entries (boxes, masks, the semantic map ...).
"""

from __future__ import annotations

import torch

from fourm21.inference.decode import DecodeSettings


def unletterbox(pred: dict[str, torch.Tensor], orig_size: tuple[int, int], scale: float, s: DecodeSettings
                ) -> dict[str, torch.Tensor]:
    """A copy of one image's ``pred`` with every task's entries in original pixels (``orig_size`` = (h, w))."""
    out = dict(pred)
    for name, task in s.tasks.items():
        task.to_original(pred, out, orig_size, scale, s.of(name))
    return out


def to_original_pixels(pred: dict[str, torch.Tensor], meta: dict, s: DecodeSettings) -> dict[str, torch.Tensor]:
    """``unletterbox`` by a sample's ``meta`` (``orig_size``, ``scale``): what the evaluator's COCO scoring takes."""
    return unletterbox(pred, meta["orig_size"], float(meta.get("scale", 1.0)), s)
