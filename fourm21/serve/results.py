"""One image's predictions as the JSON ``fourm21-predict`` writes, and the overlay as a base64 PNG.

The entries come from ``fourm21.inference.results`` (the one converter) and the drawing from
``fourm21.inference.render``, so the service, the CLI and the video overlays cannot drift apart.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from fourm21.inference.render import draw_frame
from fourm21.inference.results import caption_lines, coco_entries, image_json

if TYPE_CHECKING:
    from fourm21.inference.model import Fourm21Model


def prediction_json(pred: dict[str, torch.Tensor], model: Fourm21Model, image: np.ndarray,
                    file_name: str | None, masks: bool = True) -> dict:
    """``{"image": {...}, "annotations": [...]}``: the image entry and the COCO results entries of one
    image in ``predictions.json`` (image id 1, annotation ids from 1); ``masks=False`` leaves out the RLEs."""
    entry = image_json(pred, model.meta, model.settings, 1, file_name, image.shape[:2])
    annotations = coco_entries(pred, 1, model.meta, model.settings, masks=masks)
    for i, ann in enumerate(annotations, start=1):
        ann["id"] = i
    return {"image": entry, "annotations": annotations}


def overlay_png_base64(pred: dict[str, torch.Tensor], model: Fourm21Model, image: np.ndarray,
                       score_thr: float, semantic: bool) -> str:
    """The overlay ``fourm21-predict`` draws on video frames (boxes, masks, image classes), PNG in base64."""
    canvas = draw_frame(image, pred, model.class_names, model.image_class_names, score_thr, semantic,
                        caption_lines(pred, model.meta, model.settings), settings=model.settings)
    ok, png = cv2.imencode(".png", cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("OpenCV could not encode the overlay as PNG")
    return base64.b64encode(png.tobytes()).decode("ascii")
