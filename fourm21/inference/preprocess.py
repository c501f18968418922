"""Images of any kind -> the letterboxed uint8 batch the network takes (``INPUT_CONTRACT``), by the training val
pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fourm21.data.images import read_image, to_rgb
from fourm21.data.transforms import build_dense_transform, to_chw

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
    """The letterbox (longest side to ``img_size``, padded bottom/right) that training validates with
    (``build_dense_transform(train=False)``): one definition, so predictions see what validation saw. Its output
    is uint8 pixels, as the network takes them (it normalises them itself)."""

    def __init__(self, img_size: int) -> None:
        self.img_size = int(img_size)
        self.transform = build_dense_transform(self.img_size, train=False)

    def __call__(self, image: ImageLike) -> tuple[torch.Tensor, dict]:
        """One image -> (3, S, S) uint8 tensor and the meta that maps predictions back (orig_size, scale)."""
        arr, name = as_rgb_array(image)
        out = self.transform(image=arr)["image"]
        h, w = arr.shape[:2]
        meta = {"orig_size": (h, w), "scale": self.img_size / max(h, w), "file_name": name}
        return to_chw(out), meta
