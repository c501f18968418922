"""Semi-supervised training with pseudo-labels: a teacher labels unlabelled images, the student learns them.

The teacher (an exponential moving average of the student, or the student itself) predicts on a
weak view of each unlabelled image; predictions above the confidence thresholds of ``semi.thresholds``
become targets in the ordinary batch format, with task masks, so the heads' own losses train on
them. The student sees a photometrically jittered copy of the same view, so boxes and masks stay
aligned while the two views still differ (FixMatch / Mean Teacher / Unbiased Teacher style).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fourm21.inference.decode import DecodeSettings


def photometric_jitter(images: torch.Tensor, strength: float, generator: torch.Generator | None = None
                       ) -> torch.Tensor:
    """(B, 3, H, W) normalised images -> per-image random contrast, brightness, channel gain and noise.

    Pixel-aligned, so the teacher's boxes and masks are valid targets for the jittered copy.
    """
    if strength <= 0:
        return images
    b = images.shape[0]

    def uniform(*shape: int) -> torch.Tensor:
        return (torch.rand(*shape, generator=generator) * 2 - 1).to(images.device, images.dtype)

    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    contrast = 1 + strength * uniform(b, 1, 1, 1)
    brightness = strength * uniform(b, 1, 1, 1)
    gain = 1 + 0.5 * strength * uniform(b, 3, 1, 1)
    noise = 0.1 * strength * torch.randn(images.shape, generator=generator).to(images.device, images.dtype)
    return (images - mean) * contrast * gain + mean + brightness + noise


@torch.no_grad()
def pseudo_targets(outputs: Mapping[str, Any], preds: list[dict[str, torch.Tensor]], batch: dict[str, Any],
                   thresholds: Mapping[str, float], settings: DecodeSettings) -> dict[str, Any]:
    """Fill ``batch`` (collated unlabelled images) with the teacher's confident predictions.

    outputs: the teacher's raw outputs; preds: their decoding (same image size as the batch); ``settings``: the
    teacher's (its tasks, dependencies first). Each head's task writes its targets and task mask
    (``Task.pseudo_targets``) from the predictions at or above ``thresholds[<head name>]`` (``semi.thresholds``).
    Returns the batch; ``pseudo/*`` counts are in ``batch["pseudo_stats"]``.
    """
    stats: dict[str, float] = {}
    cache: dict[str, Any] = {}
    for name, task in settings.tasks.items():
        if name in outputs:
            task.pseudo_targets(name, outputs, preds, batch, thresholds.get(name), stats, cache)
    batch["pseudo_stats"] = stats
    return batch
