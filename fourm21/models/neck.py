"""FPN + PAN neck: torchvision's top-down FPN followed by a bottom-up path aggregation."""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork

from fourm21.errors import ConfigError

NORMS = ("group", "batch")  # model.norm: the normalisation of the neck's and the dense heads' convolutions


def check_norm(norm: str, key: str) -> str:
    if norm not in NORMS:
        raise ConfigError(f"{key} must be one of {NORMS}, got '{norm}'")
    return norm


def conv_norm_act(c_in: int, c_out: int, k: int = 3, s: int = 1, separable: bool = False,
                  norm: str = "group") -> nn.Sequential:
    """Conv + norm + SiLU. ``group``: GroupNorm keeps small and mixed batches stable; ``batch``: BatchNorm,
    which an export folds into the convolution (model=lite: a faster graph on CPUs, int8 ones included).
    ``separable``: a depthwise k x k conv then a pointwise 1 x 1 one (about k*k times fewer multiply-adds:
    the CPU-latency heads)."""
    if separable and k > 1:
        conv: list[nn.Module] = [nn.Conv2d(c_in, c_in, k, s, k // 2, groups=c_in, bias=False),
                                 nn.Conv2d(c_in, c_out, 1, bias=False)]
    else:
        conv = [nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False)]
    layer = nn.GroupNorm(math.gcd(8, c_out), c_out) if check_norm(norm, "model.norm") == "group" \
        else nn.BatchNorm2d(c_out)
    return nn.Sequential(*conv, layer, nn.SiLU(inplace=True))


class SharedTower(nn.Module):
    """``num_convs`` blocks of ``conv_norm_act`` whose convolutions every level shares. With ``norm=batch``
    each level has BatchNorms of its own (levels differ in their statistics, which one running average
    would blur at inference); GroupNorm needs no running statistics and is shared as it is."""

    def __init__(self, channels: int, num_convs: int, levels: int, separable: bool = False,
                 norm: str = "group") -> None:
        super().__init__()
        for i in range(num_convs):  # registered as 0, 1, ...: the keys of the nn.Sequential this replaced
            self.add_module(str(i), conv_norm_act(channels, channels, separable=separable, norm=norm))
        self.num_convs = num_convs
        self.level_norms = nn.ModuleList(nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(levels - 1))
                                         for _ in range(num_convs)) if norm == "batch" else None

    def forward(self, x: torch.Tensor, level: int = 0) -> torch.Tensor:
        """(B, C, H, W) of level ``level`` (index into the head's strides) -> (B, C, H, W)."""
        for i in range(self.num_convs):
            block = getattr(self, str(i))
            if self.level_norms is None or level == 0:
                x = block(x)
                continue
            for conv in block[:-2]:
                x = conv(x)
            x = block[-1](self.level_norms[i][level - 1](x))
        return x


class FpnPan(nn.Module):
    """Maps backbone levels to ``channels``-wide maps at the same strides, finest first."""

    def __init__(self, in_channels: list[int], strides: list[int], channels: int = 64, pan: bool = True,
                 norm: str = "group") -> None:
        super().__init__()
        self.strides = list(strides)
        self.channels = channels
        self.fpn = FeaturePyramidNetwork(list(in_channels), channels)
        self.pan = pan
        if pan:
            self.down = nn.ModuleList(conv_norm_act(channels, channels, 3, 2, norm=norm) for _ in strides[1:])
            self.merge = nn.ModuleList(conv_norm_act(channels, channels, norm=norm) for _ in strides[1:])

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
