"""What every reader hands the COCO writer: images with their instances, in COCO's own units.

A reader turns one tool's files into a ``Source`` (categories, images per split); the writer
(``fourm21.data.formats.to_coco``) knows nothing of the tool. Coordinates are pixels of the image
as displayed (EXIF rotation applied), as the COCO reader decodes it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

from fourm21.errors import BadImageError

EXIF_ORIENTATION = 0x0112
ROTATED = (5, 6, 7, 8)  # EXIF orientations stored turned by 90 degrees: width and height swap when displayed


@dataclass
class Instance:
    """One object: a COCO category id, its box (x, y, w, h) and, if it has one, a mask as polygons or RLE.

    ``keypoints``: COCO's flat ``[x1, y1, v1, ...]`` in pixels (v 0: not labelled, then x = y = 0; 1: occluded;
    2: visible), for pose labels (YOLO's ``kpt_shape``); None for objects without keypoints."""

    category_id: int
    bbox: tuple[float, float, float, float]
    segmentation: list[list[float]] | dict | None = None
    iscrowd: int = 0
    keypoints: list[float] | None = None


@dataclass
class ImageRecord:
    """One image: its name under ``<out>/<split>2017/``, size, where its bytes come from, its objects.

    ``source`` is the file to link or copy; ``data`` the bytes of an image embedded in a label file
    (LabelMe's ``imageData``). ``semantic`` is a class-map PNG of the source's own indices (VOC's
    SegmentationClass), remapped by ``Source.semantic_lut`` when written."""

    file_name: str
    height: int
    width: int
    source: Path | None
    data: bytes | None = None
    instances: list[Instance] = field(default_factory=list)
    semantic: Path | None = None


@dataclass
class Source:
    """A data set read from a tool's files: ``categories`` [(COCO id, name)], ``splits`` {name: images}.

    ``notes`` counts what was left out or assumed while reading (printed by the converter);
    ``skipped`` lists the images left out under ``on_bad_image=skip`` ({file: reason}).
    ``category_fields`` holds more keys of a category's COCO entry, by COCO id (pose: ``keypoints``,
    ``skeleton``, ``flip_idx``), so the writer stays ignorant of where they came from."""

    categories: list[tuple[int, str]]
    splits: dict[str, list[ImageRecord]]
    notes: Counter[str] = field(default_factory=Counter)
    skipped: dict[str, str] = field(default_factory=dict)
    semantic_lut: np.ndarray | None = None
    category_fields: dict[int, dict[str, Any]] = field(default_factory=dict)


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image as displayed, read from its header only; a BadImageError naming it."""
    if not path.is_file():
        raise BadImageError(f"{path}: image not found", path=str(path), reason="image not found")
    try:
        with Image.open(path) as im:
            w, h = im.size
            turned = im.getexif().get(EXIF_ORIENTATION, 1) in ROTATED
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        reason = f"not an image PIL can read ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        raise BadImageError(f"{path}: {reason}", path=str(path), reason=reason) from None
    return (w, h) if turned else (h, w)


def box_instance(category_id: int, x0: float, y0: float, x1: float, y1: float, iscrowd: int = 0) -> Instance:
    """A box-only object from corners (any order)."""
    xa, xb, ya, yb = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
    return Instance(category_id, (xa, ya, xb - xa, yb - ya), None, iscrowd)


def polygon_instance(category_id: int, polygons: list[list[float]], iscrowd: int = 0) -> Instance:
    """An object from polygons ``[[x1, y1, x2, y2, ...], ...]`` in pixels; its box encloses them all."""
    xs = [v for p in polygons for v in p[0::2]]
    ys = [v for p in polygons for v in p[1::2]]
    return Instance(category_id, (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)), polygons, iscrowd)


def mask_instance(category_id: int, mask: np.ndarray, iscrowd: int = 0) -> Instance | None:
    """An object from an (H, W) bool mask, stored as COCO RLE; None for an empty mask."""
    if not mask.any():
        return None
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
    return Instance(category_id, (x, y, w, h), rle, iscrowd)


def box_polygon(bbox: tuple[float, float, float, float]) -> list[float]:
    """The four corners of an (x, y, w, h) box as one COCO polygon."""
    x, y, w, h = bbox
    return [x, y, x + w, y, x + w, y + h, x, y + h]


def area(inst: Instance, height: int, width: int) -> float:
    """COCO's ``area``: of the mask when there is one (as pycocotools rasterises it), else of the box."""
    seg = inst.segmentation
    if isinstance(seg, dict):
        return float(mask_utils.area(seg))
    if seg:
        return float(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(seg, height, width))))
    return float(inst.bbox[2] * inst.bbox[3])
