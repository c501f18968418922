"""Unlabelled images for self-supervised pretraining: any folder (recursively), each image seen as one or more views."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from fourm21.data.images import list_images, read_image
from fourm21.data.transforms import IMAGENET_MEAN, IMAGENET_STD, apply_dense_transform


def build_view_transform(img_size: int, min_scale: float = 0.3, color_jitter: float = 0.4,
                         gray_p: float = 0.2) -> A.Compose:
    """A random view: resized crop, flip, colour jitter (SimCLR: strong; SimMIM: none), sometimes grey, normalise."""
    ops: list[A.BasicTransform] = [
        A.RandomResizedCrop((img_size, img_size), scale=(min_scale, 1.0), interpolation=cv2.INTER_LINEAR),
        A.HorizontalFlip(p=0.5),
    ]
    if color_jitter > 0:
        ops.append(A.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter,
                                 hue=min(0.5, color_jitter / 4), p=0.8))
    if gray_p > 0:
        ops.append(A.ToGray(p=gray_p))
    ops.append(A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD))
    return A.Compose(ops)


class ImageViewsFolder(Dataset):
    """Every image under ``root`` (labels, if any, are ignored) as ``view1`` ... ``view<views>``.

    Two views feed contrastive learning, one feeds masked-image modelling.
    """

    def __init__(self, root: str | Path, transform: Any, limit: int | None = None, cache: bool = True,
                 views: int = 2) -> None:
        self.files = list_images(root)[:limit] if limit else list_images(root)
        self.transform = transform
        self.views = views
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.files)

    def _image(self, i: int) -> np.ndarray:
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        image = read_image(self.files[i])
        if self._cache is not None:
            self._cache[i] = image
        return image

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image = self._image(i)
        views = [self.transform(image=image)["image"] for _ in range(self.views)]
        return {f"view{k + 1}": torch.from_numpy(v.transpose(2, 0, 1).copy()) for k, v in enumerate(views)}


class UnlabelledImages(Dataset):
    """Every image under ``root`` as a Sample with no targets (for pseudo-labelling); labels, if any, ignored.

    ``transform`` is one of the labelled pipelines (``build_dense_transform`` or
    ``build_classification_transform``), so unlabelled images get the same size and normalisation.
    """

    def __init__(self, root: str | Path, transform: Any, limit: int | None = None, cache: bool = True,
                 source: str = "unlabelled") -> None:
        self.root = Path(root)
        self.files = list_images(root)[:limit] if limit else list_images(root)
        self.transform = transform
        self.source = source
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self._cache is not None and i in self._cache:
            image = self._cache[i]
        else:
            image = read_image(self.files[i])
            if self._cache is not None:
                self._cache[i] = image
        h, w = image.shape[:2]
        if "bboxes" in getattr(self.transform, "processors", {}):
            out = apply_dense_transform(self.transform, image, np.zeros((0, 4), np.float32), None, None)["image"]
        else:
            out = self.transform(image=image)["image"]
        size = out.shape[:2]
        return {"image": torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1))).float(),
                "meta": {"image_id": i, "source": self.source, "orig_size": (h, w), "scale": max(size) / max(h, w),
                         "file_name": str(self.files[i].relative_to(self.root)) if self.root.is_dir()
                         else self.files[i].name}}
