"""Instance masks from low-resolution logits to full-size boolean masks, computed inside each box only.

Upsampling every kept detection's mask to the whole image (N x H x W floats) costs more on a CPU
than the lite network's forward pass; a mask is zero outside its box anyway, so each box's crop is
interpolated alone. The values are those of ``F.interpolate(mode="bilinear", align_corners=False)``
(same source indices and weights), so the masks equal upsampling first and cropping afterwards.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import torch

T = TypeVar("T")


def tracing() -> bool:
    """Inside ``torch.jit.trace`` / ``torch.compile`` / ``torch.export`` (an export of the end-to-end graph):
    no NumPy and no cached tensors there, which would become constants of the graph."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def numpy_ok(t: torch.Tensor) -> bool:
    """Whether ``t``'s work may go through NumPy: on the CPU, outside a trace."""
    return t.device.type == "cpu" and not tracing()


def cached_outside_trace(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` of hashable arguments, cached (its results read only: the same sizes come back every image) and
    built outside inference mode so that autograd may use them too; inside a trace computed afresh."""
    @functools.lru_cache(maxsize=64)
    def cached(*args: Any) -> T:
        with torch.inference_mode(False):
            return fn(*args)

    @functools.wraps(fn)
    def call(*args: Any) -> T:
        return fn(*args) if tracing() else cached(*args)

    call.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
    return call


@cached_outside_trace
def bilinear_matrix(out_len: int, in_len: int, scale: float,
                    device: torch.device) -> tuple[torch.Tensor, list[int], list[int]]:
    """(out_len, in_len) matrix whose row i holds output pixel i's two bilinear weights, as
    ``F.interpolate(mode="bilinear", align_corners=False)`` takes them (``scale`` = source pixels per
    output pixel), plus each output pixel's first and last source index."""
    src = ((torch.arange(out_len, device=device, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_(min=0)
    i0 = src.long().clamp_(max=in_len - 1)
    i1 = (i0 + 1).clamp_(max=in_len - 1)
    frac = (src - i0).clamp_(0, 1)
    rows = torch.arange(out_len, device=device)
    weights = torch.zeros((out_len, in_len), device=device)
    weights.index_put_((rows, i0), 1 - frac, accumulate=True)
    weights.index_put_((rows, i1), frac, accumulate=True)
    return weights, i0.tolist(), i1.tolist()


def box_pixel_ranges(boxes: torch.Tensor, height: int, width: int) -> list[list[int]]:
    """(N, 4) xyxy -> per box [x_first, x_stop, y_first, y_stop]: the pixels whose centre lies in the box
    (as ``box_crop_weights`` counts them)."""
    b = boxes.detach().float().cpu()
    x0 = (b[:, 0] - 0.5).ceil().clamp(0, width)
    x1 = ((b[:, 2] - 0.5).floor() + 1).clamp(0, width)
    y0 = (b[:, 1] - 0.5).ceil().clamp(0, height)
    y1 = ((b[:, 3] - 0.5).floor() + 1).clamp(0, height)
    return torch.stack([x0, x1, y0, y1], 1).long().tolist()


def zeros_bool(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """A zero boolean tensor. On the CPU from ``numpy.zeros`` (calloc: the OS hands out zeroed pages as they
    are first touched), as masks are zero outside their boxes: 100 masks at 640 x 640 (41 MB) cost ~10 ms
    to zero-fill with ``torch.zeros`` and almost nothing this way."""
    if device.type == "cpu":
        return torch.from_numpy(np.zeros(shape, dtype=np.bool_))
    return torch.zeros(shape, dtype=torch.bool, device=device)


# Multiply-adds per mask of upsampling it whole (H * w * (h + W)) up to which that beats a Python step per box
# (~20 us each): outputs of up to ~100 px from a quarter-resolution grid (the shapes data, the tests' models);
# on the 2-core dev CPU 100 masks at 64 px 1.7 -> 0.6 ms, at 96 px 1.7 -> 1.1 ms; at 128 px the loop wins.
WHOLE_MASK_MACS = 300_000


def paste_masks(mask_logits: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int],
                scale: tuple[float, float] | None = None, threshold: float = 0.5) -> torch.Tensor:
    """(N, h, w) mask logits + (N, 4) xyxy boxes in output pixels -> (N, H, W) bool masks at ``size``.

    A pixel is set where it lies inside its box and the bilinearly upsampled probability exceeds
    ``threshold``. ``scale`` = (source rows, source columns) per output pixel; by default the low
    resolution grid spans the whole output (h / H, w / W). Each crop is two small matrix products
    over the source pixels its box touches; on small outputs (see ``WHOLE_MASK_MACS``) every mask is
    upsampled whole by the same two products in one batched call and cut to its box, the same values
    without a Python step per box.
    """
    n, h_in, w_in = mask_logits.shape
    height, width = size
    if n == 0:
        return zeros_bool((0, height, width), mask_logits.device)
    sy, sx = scale if scale is not None else (h_in / height, w_in / width)
    wy, y_first, y_last = bilinear_matrix(height, h_in, sy, mask_logits.device)
    wx, x_first, x_last = bilinear_matrix(width, w_in, sx, mask_logits.device)
    thr = math.log(threshold / (1 - threshold)) if 0 < threshold < 1 else (-math.inf if threshold <= 0 else math.inf)
    logits = mask_logits.float()
    ranges = box_pixel_ranges(boxes, height, width)
    if height * w_in * (h_in + width) <= WHOLE_MASK_MACS:
        r = torch.tensor(ranges, device=logits.device).reshape(n, 4)
        rows = torch.arange(height, device=logits.device)
        cols = torch.arange(width, device=logits.device)
        inside = (((rows[None] >= r[:, 2:3]) & (rows[None] < r[:, 3:4]))[:, :, None]
                  & ((cols[None] >= r[:, 0:1]) & (cols[None] < r[:, 1:2]))[:, None, :])
        return ((wy @ logits @ wx.T) > thr) & inside
    out = zeros_bool((n, height, width), mask_logits.device)
    paste = paste_crops_numpy if numpy_ok(logits) else paste_crops_torch
    paste(out, logits, wy, wx, thr, ranges, (y_first, y_last, x_first, x_last))
    return out


def box_windows(ranges: list[list[int]], first_last: tuple[list[int], ...]
                ) -> Iterator[tuple[int, tuple[int, int, int, int], tuple[int, int, int, int]]]:
    """Per non-empty box ``i``: its output pixels (rows ya:yb, columns xa:xb) and the source pixels they read
    (rows ra:rb, columns ca:cb)."""
    y_first, y_last, x_first, x_last = first_last
    for i, (xa, xb, ya, yb) in enumerate(ranges):
        if xa < xb and ya < yb:
            yield i, (ya, yb, xa, xb), (y_first[ya], y_last[yb - 1] + 1, x_first[xa], x_last[xb - 1] + 1)


def paste_crops_torch(out: torch.Tensor, logits: torch.Tensor, wy: torch.Tensor, wx: torch.Tensor, thr: float,
                      ranges: list[list[int]], first_last: tuple[list[int], ...]) -> None:
    """Fill ``out[i]`` inside box ``i``'s pixel range: two products over the source pixels it touches."""
    for i, (ya, yb, xa, xb), (ra, rb, ca, cb) in box_windows(ranges, first_last):
        crop = wy[ya:yb, ra:rb] @ logits[i, ra:rb, ca:cb] @ wx[xa:xb, ca:cb].T
        torch.gt(crop, thr, out=out[i, ya:yb, xa:xb])


def paste_crops_numpy(out: torch.Tensor, logits: torch.Tensor, wy: torch.Tensor, wx: torch.Tensor, thr: float,
                      ranges: list[list[int]], first_last: tuple[list[int], ...]) -> None:
    """``paste_crops_torch`` in NumPy on CPU tensors (shared memory, the same masks): a box's step costs ~5 us
    there against ~20 us of PyTorch's per-operation overhead (100 masks at 320 px: 2.5 -> 0.6 ms)."""
    wy_n, logits_n, wxt_n, out_n = wy.numpy(), logits.detach().numpy(), wx.numpy().T, out.numpy()
    for i, (ya, yb, xa, xb), (ra, rb, ca, cb) in box_windows(ranges, first_last):
        np.greater(wy_n[ya:yb, ra:rb] @ logits_n[i, ra:rb, ca:cb] @ wxt_n[ca:cb, xa:xb], thr,
                   out=out_n[i, ya:yb, xa:xb])
