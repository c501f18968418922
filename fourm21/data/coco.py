"""COCO-format instance data read with pycocotools, turned into Samples.

Works for real COCO and for the generated shapes set. Category ids are mapped to contiguous
0-based ids (and back when writing results); crowd annotations are left out of training
targets (COCOeval handles them); images without annotations are kept. An image-level class is
read from ``images[i][image_label_key]`` when present, a semantic mask from ``semantic_dir``
when given, otherwise derived from the instance masks.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from fourm21.data.images import read_image
from fourm21.data.sample import IGNORE_INDEX, Sample
from fourm21.data.transforms import apply_dense_transform
from fourm21.errors import DatasetError


def load_coco(ann_file: str | Path) -> COCO:
    """Read a COCO JSON quietly, with errors that name the file."""
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise DatasetError(f"annotation file not found: {ann_file}")
    try:
        data = json.loads(ann_file.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{ann_file}: not valid JSON ({e})") from None
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DatasetError(f"{ann_file}: missing top-level key '{key}'")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class CocoDataset(Dataset):
    """Samples with boxes, instance masks, semantic mask and (optionally) an image label."""

    def __init__(self, img_dir: str | Path, ann_file: str | Path, transform: Any = None,
                 semantic_dir: str | Path | None = None, image_label_key: str | None = "label",
                 cache: bool = False, source: str = "coco", limit: int | None = None) -> None:
        self.img_dir = Path(img_dir)
        self.ann_file = Path(ann_file)
        self.semantic_dir = Path(semantic_dir) if semantic_dir else None
        self.transform = transform
        self.source = source
        self.coco = load_coco(self.ann_file)
        self.ids = sorted(self.coco.imgs)
        if limit is not None:  # the first ``limit`` images only: a labelled subset for semi-supervised runs
            if int(limit) < 1:
                raise DatasetError(f"{self.ann_file}: limit must be >= 1, got {limit}")
            self.ids = self.ids[: int(limit)]
        cats = sorted(self.coco.cats)
        self.cat_ids: list[int] = cats  # contiguous index -> original COCO id
        self.cat_to_index = {c: i for i, c in enumerate(cats)}
        self.class_names = [self.coco.cats[c]["name"] for c in cats]
        image_cats = self.coco.dataset.get("image_categories")
        self.image_class_names = [c["name"] for c in sorted(image_cats, key=lambda c: c["id"])] if image_cats else []
        self.image_label_key = image_label_key if self.image_class_names else None
        self._cache: dict[int, tuple] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.ids)

    def _load_raw(self, image_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Decoded image (H, W, 3) uint8, boxes (N, 4) xyxy, labels (N,), masks (N, H, W), semantic (H, W)."""
        if self._cache is not None and image_id in self._cache:
            return self._cache[image_id]
        info = self.coco.imgs[image_id]
        path = self.img_dir / info["file_name"]
        image = read_image(path)
        h, w = image.shape[:2]
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        boxes, labels, masks = [], [], []
        for a in anns:
            x, y, bw, bh = a["bbox"]
            if bw <= 0 or bh <= 0:
                continue
            if a["category_id"] not in self.cat_to_index:
                raise DatasetError(f"{self.ann_file}: annotation {a.get('id')} has unknown category_id "
                                   f"{a['category_id']}")
            boxes.append([x, y, min(x + bw, w), min(y + bh, h)])
            labels.append(self.cat_to_index[a["category_id"]])
            masks.append(self.coco.annToMask(a).astype(bool) if a.get("segmentation") else
                         _box_mask(boxes[-1], h, w))
        boxes_np = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        labels_np = np.asarray(labels, dtype=np.int64)
        masks_np = np.stack(masks) if masks else np.zeros((0, h, w), dtype=bool)
        semantic = self._semantic(info, masks_np, labels_np, image_id, h, w)
        raw = (image, boxes_np, labels_np, masks_np, semantic)
        if self._cache is not None:
            self._cache[image_id] = raw
        return raw

    def _semantic(self, info: dict, masks: np.ndarray, labels: np.ndarray, image_id: int, h: int, w: int) -> np.ndarray:
        if self.semantic_dir is not None:
            path = (self.semantic_dir / info["file_name"]).with_suffix(".png")
            try:
                with Image.open(path) as im:
                    return np.asarray(im, dtype=np.uint8).copy()
            except OSError as e:
                raise DatasetError(f"cannot read semantic mask {path}: {e}") from None
        sem = np.zeros((h, w), dtype=np.uint8)
        order = np.argsort([-m.sum() for m in masks]) if len(masks) else []
        for i in order:  # small objects painted last, so they stay visible where they overlap big ones
            sem[masks[i]] = labels[i] + 1
        for a in self.coco.imgToAnns.get(image_id, []):
            if a.get("iscrowd", 0):
                sem[self.coco.annToMask(a).astype(bool)] = IGNORE_INDEX
        return sem

    def __getitem__(self, index: int) -> Sample:
        image_id = self.ids[index]
        image, boxes, labels, masks, semantic = self._load_raw(image_id)
        h, w = image.shape[:2]
        out = apply_dense_transform(self.transform, image, boxes, masks, semantic)
        size = out["image"].shape[:2]
        sample: Sample = {
            "image": torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1))).float(),
            "boxes": torch.from_numpy(out["boxes"]).float(),
            "box_labels": torch.from_numpy(labels[out["keep"]]).long(),
            "masks": (torch.from_numpy(out["masks"]) if out["masks"] is not None
                      else torch.zeros((0, *size), dtype=torch.bool)),
            "semantic": torch.from_numpy(out["semantic"]),
            "meta": {"image_id": image_id, "source": self.source, "orig_size": (h, w),
                     "scale": max(size) / max(h, w), "file_name": self.coco.imgs[image_id]["file_name"]},
        }
        if self.image_label_key is not None:
            label = self.coco.imgs[image_id].get(self.image_label_key)
            if label is not None:
                sample["label"] = int(label)
        return sample


def _box_mask(box: list[float], h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    m[max(y0, 0):y1, max(x0, 0):x1] = True
    return m
