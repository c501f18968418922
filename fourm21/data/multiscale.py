"""Multi-scale training: each training batch resized to a random size, a multiple of the largest stride.

``MultiScaleCollate`` wraps the collate function of the training loaders (``data.aug.multiscale``:
``[lo, hi]`` scale factors of the batch's own size; batches with boxes or semantic masks only, so the
CIFAR batches of a mixed run keep theirs). The side is drawn uniformly from the multiples of
``stride`` (32, the network's largest stride) in ``[lo, hi] x side``; the batch keeps its size when
there is none. Images are resized bilinearly (antialiased when shrinking), boxes scaled, instance-mask
targets resized as areas (coverage fractions: area averaging down, bilinear up; bool full-resolution
masks bilinear then thresholded), the semantic target by nearest neighbour (IGNORE_INDEX stays).

The size is a function of (seed, epoch, the batch's images), read from an ``EpochClock``, so it does
not depend on the number of workers and a resumed run draws what the killed one would have.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fourm21.data.clock import EpochClock
from fourm21.data.collate import collate_samples
from fourm21.errors import ConfigError


def multiscale_sizes(side: int, scales: Sequence[float], stride: int = 32) -> list[int]:
    """The multiples of ``stride`` within ``[scales[0], scales[1]] * side``."""
    lo, hi = float(scales[0]) * side, float(scales[1]) * side
    return [k * stride for k in range(max(1, math.ceil(lo / stride - 1e-9)), math.floor(hi / stride + 1e-9) + 1)]


def resize_batch(batch: dict, size: tuple[int, int]) -> dict:
    """A collated batch (``collate_samples``) resized to ``size`` (h, w): images, boxes, keypoints, masks, semantic,
    meta."""
    images = batch["image"]
    h, w = images.shape[-2:]
    nh, nw = int(size[0]), int(size[1])
    if (nh, nw) == (h, w):
        return batch
    sy, sx = nh / h, nw / w
    out = dict(batch)
    out["image"] = F.interpolate(images, size=(nh, nw), mode="bilinear", align_corners=False,
                                 antialias=nh < h or nw < w)
    out["gt_boxes"] = batch["gt_boxes"] * batch["gt_boxes"].new_tensor([sx, sy, sx, sy])
    if "gt_keypoints" in batch:  # [x, y, v]: the points scale, the visibility stays
        out["gt_keypoints"] = batch["gt_keypoints"] * batch["gt_keypoints"].new_tensor([sx, sy, 1.0])
    masks = batch["gt_masks"]
    b, m, mh, mw = masks.shape
    if masks.dtype == torch.bool:  # full-resolution bool masks
        flat = masks.reshape(b * m, 1, mh, mw).float()
        new = F.interpolate(flat, size=(nh, nw), mode="bilinear", align_corners=False) >= 0.5
        out["gt_masks"] = new.reshape(b, m, nh, nw)
    elif b * m:  # cell coverage at 1/stride of the input
        stride = max(1, round(h / mh))
        gh, gw = -(-nh // stride), -(-nw // stride)
        flat = masks.reshape(b * m, 1, mh, mw).float()
        mode = "area" if gh <= mh and gw <= mw else "bilinear"
        new = F.interpolate(flat, size=(gh, gw), mode=mode, **({} if mode == "area" else {"align_corners": False}))
        out["gt_masks"] = new.clamp_(0, 1).reshape(b, m, gh, gw).to(masks.dtype)
    sem = batch["semantic"]
    out["semantic"] = F.interpolate(sem[:, None].float(), size=(nh, nw), mode="nearest-exact")[:, 0].to(sem.dtype)
    out["meta"] = [dict(mt, scale=mt["scale"] * sx) if isinstance(mt, dict) and "scale" in mt else mt
                   for mt in batch["meta"]]
    return out


def _batch_key(meta: list) -> int:
    ids = [(m.get("source"), m.get("image_id")) if isinstance(m, dict) else None for m in meta]
    return zlib.crc32(repr(ids).encode())


class MultiScaleCollate:
    """``collate_fn`` for training loaders: ``collate_fn(samples)`` then ``resize_batch`` to a random size."""

    def __init__(self, scales: Sequence[float], stride: int = 32, clock: EpochClock | None = None,
                 collate_fn: Callable = collate_samples) -> None:
        scales = [float(s) for s in scales]
        if len(scales) != 2 or not 0 < scales[0] <= scales[1]:
            raise ConfigError(f"data.aug.multiscale: need [lo, hi] with 0 < lo <= hi, got {scales}")
        self.scales = scales
        self.stride = int(stride)
        self.clock = clock if clock is not None else EpochClock()
        self.collate_fn = collate_fn

    def size_for(self, side: int, meta: list) -> int:
        sizes = multiscale_sizes(side, self.scales, self.stride)
        if not sizes:
            return side
        rng = np.random.default_rng([self.clock.seed, self.clock.epoch, _batch_key(meta), 0x6D73])
        return int(sizes[int(rng.integers(len(sizes)))])

    def __call__(self, samples: list) -> dict | None:
        batch = self.collate_fn(samples)
        if batch is None or not (batch["has_boxes"].any() or batch["has_semantic"].any()):
            return batch  # image-level batches (CIFAR in a mixed run) keep their size
        h, w = batch["image"].shape[-2:]
        side = self.size_for(max(h, w), batch["meta"])
        if h == w:
            return resize_batch(batch, (side, side))
        f = side / max(h, w)  # not square: the longest side to ``side``, the other to a multiple of the stride
        other = max(self.stride, round(min(h, w) * f / self.stride) * self.stride)
        return resize_batch(batch, (side, other) if h >= w else (other, side))
