"""Layers that a CPU runs slower in bf16 than in fp32: under CPU autocast they compute in fp32.

On an AMX CPU (measured: Xeon, oneDNN in torch 2.14, the default model at 64 px, batch 32), bf16 autocast
makes dense convolutions ~5x faster, but oneDNN's bf16 backward of depthwise convolutions and GroupNorm
runs at about half the speed of fp32, which cancelled most of the gain of ``trainer.precision=bf16-mixed``.
Keeping those two in fp32 keeps the gain. Nothing changes outside CPU autocast (fp32 runs, GPUs, exports).
"""

from __future__ import annotations

import torch
from torch import nn


class _Fp32UnderCpuAutocast(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


class DepthwiseConv2dFp32OnCpu(_Fp32UnderCpuAutocast, nn.Conv2d):
    """``nn.Conv2d`` with ``groups == in_channels``; fp32 under CPU autocast."""


class GroupNormFp32OnCpu(_Fp32UnderCpuAutocast, nn.GroupNorm):
    """``nn.GroupNorm``; fp32 under CPU autocast."""


def keep_fp32_under_cpu_autocast(net: nn.Module) -> nn.Module:
    """Switch ``net``'s depthwise convolutions and GroupNorms to the classes above, in place (same weights,
    same state dict keys, and a deep copy such as the EMA keeps them)."""
    for m in net.modules():
        if type(m) is nn.Conv2d and m.groups > 1 and m.groups == m.in_channels:
            m.__class__ = DepthwiseConv2dFp32OnCpu
        elif type(m) is nn.GroupNorm:
            m.__class__ = GroupNormFp32OnCpu
    return net
