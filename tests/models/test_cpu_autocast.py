"""Depthwise convolutions and GroupNorm compute in fp32 under CPU autocast; nothing else changes."""

from __future__ import annotations

import copy

import torch
from torch import nn

from fourm21.models.cpu_autocast import DepthwiseConv2dFp32OnCpu, GroupNormFp32OnCpu, keep_fp32_under_cpu_autocast


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 7, padding=3, groups=8), nn.GroupNorm(2, 8),
                         nn.Conv2d(8, 8, 3, padding=1, groups=2))


def test_only_depthwise_convolutions_and_group_norms_switch_and_weights_stay():
    plain = _net()
    net = keep_fp32_under_cpu_autocast(copy.deepcopy(plain))
    assert [type(m) for m in net] == [nn.Conv2d, DepthwiseConv2dFp32OnCpu, GroupNormFp32OnCpu, nn.Conv2d]
    assert net.state_dict().keys() == plain.state_dict().keys()
    assert type(copy.deepcopy(net)[1]) is DepthwiseConv2dFp32OnCpu  # an EMA copy keeps them
    x = torch.randn(2, 8, 12, 12)
    assert torch.equal(net(x), plain(x))  # outside autocast: the same computation


def test_under_cpu_autocast_they_run_in_fp32_and_match_fp32():
    net = keep_fp32_under_cpu_autocast(_net())
    x = torch.randn(2, 8, 12, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dense = net[0](x)
        depthwise = net[1](dense)
        norm = net[2](depthwise)
    assert dense.dtype == torch.bfloat16  # dense convolutions keep autocast's bf16
    assert depthwise.dtype == norm.dtype == torch.float32
    ref = nn.functional.conv2d(dense.float(), net[1].weight, net[1].bias, padding=3, groups=8)
    torch.testing.assert_close(depthwise, ref)
    depthwise.sum().backward()
    assert net[1].weight.grad is not None and net[1].weight.grad.dtype == torch.float32
