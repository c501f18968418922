"""Unlabelled images for self-supervised pretraining: any folder (recursively), each image seen as one or more views."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from fourm21.data.images import SkipLog, check_policy, list_images, read_image_or_skip
from fourm21.data.transforms import apply_dense_transform, pipeline_seed, to_chw


def build_view_transform(img_size: int, min_scale: float = 0.3, color_jitter: float = 0.4,
                         gray_p: float = 0.2) -> A.Compose:
    """A random view: resized crop, flip, colour jitter (SimCLR: strong; SimMIM: none), sometimes grey; uint8
    pixels, as the network takes them (``INPUT_CONTRACT``: it normalises them itself)."""
    ops: list[A.BasicTransform] = [
        A.RandomResizedCrop((img_size, img_size), scale=(min_scale, 1.0), interpolation=cv2.INTER_LINEAR),
        A.HorizontalFlip(p=0.5),
    ]
    if color_jitter > 0:
        ops.append(A.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter,
                                 hue=min(0.5, color_jitter / 4), p=0.8))
    if gray_p > 0:
        ops.append(A.ToGray(p=gray_p))
    return A.Compose(ops, seed=pipeline_seed())


class _ImageFolder(Dataset):
    """The images under ``root`` (recursively), decoded once and cached; bad ones skipped or fatal by policy."""

    def __init__(self, root: str | Path, limit: int | None, cache: bool, on_bad_image: str, source: str) -> None:
        self.root = Path(root)
        self.files = list_images(root)[:limit] if limit else list_images(root)
        self.on_bad_image = check_policy(on_bad_image)
        self.source = source
        self.skip_log = SkipLog(source, str(self.root.resolve()))
        self._cache: dict[int, np.ndarray | None] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.files)

    def _image(self, i: int) -> np.ndarray | None:
        """(H, W, 3) uint8, or None for a skipped bad image (recorded in ``skip_log``)."""
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        image = read_image_or_skip(self.files[i], self.on_bad_image, self.skip_log)
        if self._cache is not None:
            self._cache[i] = image
        return image


class ImageViewsFolder(_ImageFolder):
    """Every image under ``root`` (labels, if any, are ignored) as ``view1`` ... ``view<views>``.

    Two views feed contrastive learning, one feeds masked-image modelling. A skipped bad image is
    None; ``collate_views`` leaves it out.
    """

    def __init__(self, root: str | Path, transform: Any, limit: int | None = None, cache: bool = True,
                 views: int = 2, on_bad_image: str = "skip") -> None:
        super().__init__(root, limit, cache, on_bad_image, "pretrain")
        self.transform = transform
        self.views = views

    def __getitem__(self, i: int) -> dict[str, torch.Tensor] | None:
        image = self._image(i)
        if image is None:
            return None
        views = [self.transform(image=image)["image"] for _ in range(self.views)]
        return {f"view{k + 1}": torch.from_numpy(v.transpose(2, 0, 1).copy()) for k, v in enumerate(views)}


def collate_views(samples: list[dict[str, torch.Tensor] | None]) -> dict[str, torch.Tensor] | None:
    """Stack the views of the images that were read; None when every image of the batch was skipped."""
    kept = [s for s in samples if s is not None]
    return default_collate(kept) if kept else None


class UnlabelledImages(_ImageFolder):
    """Every image under ``root`` as a Sample with no targets (for pseudo-labelling); labels, if any, ignored.

    ``transform`` is one of the labelled pipelines (``build_dense_transform`` or
    ``build_classification_transform``), so unlabelled images get the same size and uint8 pixels.
    A skipped bad image is None, which ``collate_samples`` leaves out.
    """

    def __init__(self, root: str | Path, transform: Any, limit: int | None = None, cache: bool = True,
                 source: str = "unlabelled", on_bad_image: str = "skip") -> None:
        super().__init__(root, limit, cache, on_bad_image, source)
        self.transform = transform

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        image = self._image(i)
        if image is None:
            return None
        h, w = image.shape[:2]
        if "bboxes" in getattr(self.transform, "processors", {}):
            out = apply_dense_transform(self.transform, image, np.zeros((0, 4), np.float32), None, None)["image"]
        else:
            out = self.transform(image=image)["image"]
        size = out.shape[:2]
        return {"image": to_chw(out),
                "meta": {"image_id": i, "source": self.source, "orig_size": (h, w), "scale": max(size) / max(h, w),
                         "file_name": str(self.files[i].relative_to(self.root)) if self.root.is_dir()
                         else self.files[i].name}}
