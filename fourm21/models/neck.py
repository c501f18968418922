"""FPN + PAN neck: torchvision's top-down FPN followed by a bottom-up path aggregation."""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork


def conv_norm_act(c_in: int, c_out: int, k: int = 3, s: int = 1, separable: bool = False) -> nn.Sequential:
    """Conv + GroupNorm + SiLU; GroupNorm keeps small and mixed batches stable. ``separable``: a depthwise
    k x k conv then a pointwise 1 x 1 one (about k*k times fewer multiply-adds: the CPU-latency heads)."""
    if separable and k > 1:
        conv: list[nn.Module] = [nn.Conv2d(c_in, c_in, k, s, k // 2, groups=c_in, bias=False),
                                 nn.Conv2d(c_in, c_out, 1, bias=False)]
    else:
        conv = [nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False)]
    return nn.Sequential(*conv, nn.GroupNorm(math.gcd(8, c_out), c_out), nn.SiLU(inplace=True))


class FpnPan(nn.Module):
    """Maps backbone levels to ``channels``-wide maps at the same strides, finest first."""

    def __init__(self, in_channels: list[int], strides: list[int], channels: int = 64, pan: bool = True) -> None:
        super().__init__()
        self.strides = list(strides)
        self.channels = channels
        self.fpn = FeaturePyramidNetwork(list(in_channels), channels)
        self.pan = pan
        if pan:
            self.down = nn.ModuleList(conv_norm_act(channels, channels, 3, 2) for _ in strides[1:])
            self.merge = nn.ModuleList(conv_norm_act(channels, channels) for _ in strides[1:])

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """list of (B, C_i, H/s_i, W/s_i) -> list of (B, channels, H/s_i, W/s_i)."""
        outs = list(self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats))).values())
        if self.pan:
            for i in range(1, len(outs)):
                down = self.down[i - 1](outs[i - 1])
                if down.shape[-2:] != outs[i].shape[-2:]:
                    down = nn.functional.interpolate(down, size=outs[i].shape[-2:], mode="nearest")
                outs[i] = self.merge[i - 1](outs[i] + down)
        return outs
