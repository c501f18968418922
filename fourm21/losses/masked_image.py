"""Masked-image modelling loss (SimMIM): L1 between predicted and true pixels, masked patches only."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def masked_pixel_l1(pred: torch.Tensor, images: torch.Tensor, token_mask: torch.Tensor, patch_size: int
                    ) -> torch.Tensor:
    """pred, images (B, 3, H, W); token_mask (B, H/p, W/p) bool. Visible patches cost nothing, so the
    network cannot lower the loss by copying its input."""
    pixel_mask = token_mask.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2).unsqueeze(1)
    pixel_mask = pixel_mask.to(pred.dtype)
    per_pixel = F.l1_loss(pred.float(), images.float(), reduction="none")
    return (per_pixel * pixel_mask).sum() / (pixel_mask.sum() * images.shape[1]).clamp(min=1.0)
