"""Images of any kind -> the normalised letterboxed batch the network takes, by the training val pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fourm21.data.images import read_image, to_rgb
from fourm21.data.transforms import build_dense_transform, normalize_images, to_chw

ImageLike = str | Path | Image.Image | np.ndarray


def as_rgb_array(image: ImageLike) -> tuple[np.ndarray, str | None]:
    """(H, W, 3) uint8 RGB and the file name (None for an in-memory image)."""
    if isinstance(image, str | Path):
        return read_image(image), str(image)
    if isinstance(image, Image.Image):
        return to_rgb(image), None
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return arr[..., :3].astype(np.uint8), None


class Letterbox:
    """The letterbox (longest side to ``img_size``, padded bottom/right) and normalisation that training
    validates with (``build_dense_transform(train=False)``): one definition, so predictions see what
    validation saw."""

    def __init__(self, img_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.img_size = int(img_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.transform = build_dense_transform(self.img_size, train=False)

    def __call__(self, image: ImageLike) -> tuple[torch.Tensor, dict]:
        """One image -> (3, S, S) float tensor and the meta that maps predictions back (orig_size, scale)."""
        arr, name = as_rgb_array(image)
        out = self.transform(image=arr)["image"]
        h, w = arr.shape[:2]
        meta = {"orig_size": (h, w), "scale": self.img_size / max(h, w), "file_name": name}
        return normalize_images(to_chw(out), self.mean, self.std), meta
