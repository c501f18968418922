"""The one moving average of a network's weights: the evaluation EMA (``ema.enabled``) and the
semi-supervised mean teacher are both built and updated here."""

from __future__ import annotations

import math

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from fourm21.errors import ConfigError


def ema_multi_avg_fn(decay: float, ramp_steps: float):
    """``AveragedModel``'s update for an exponential moving average whose decay ramps up with the number of
    updates ``n``: ``decay * (1 - exp(-n / ramp_steps))`` (YOLOv5's ModelEMA). Early on, when the weights
    still move fast, the average follows them closely instead of holding on to the first, near-random
    weights; after a few ``ramp_steps`` it is ``decay``. ``ramp_steps=0``: torch's fixed-decay
    ``get_ema_multi_avg_fn(decay)``. The ramp depends on ``n_averaged`` only, which the checkpoint holds,
    so a resumed run continues the same average."""
    if ramp_steps <= 0:
        return get_ema_multi_avg_fn(decay)

    @torch.no_grad()
    def update(ema_params: list[torch.Tensor], params: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        d = decay * (1.0 - math.exp(-float(num_averaged) / ramp_steps))
        get_ema_multi_avg_fn(d)(ema_params, params, num_averaged)

    return update


def build_ema(net: torch.nn.Module, decay: float, ramp_steps: float = 0.0) -> AveragedModel:
    """The one moving average of a network's weights and buffers: the evaluation EMA (``ema.enabled``)
    and the semi-supervised mean teacher (``semi.teacher=ema``) are both built here."""
    if not 0.0 < decay < 1.0:
        raise ConfigError(f"EMA decay must be in (0, 1), got {decay!r}")
    if ramp_steps < 0:
        raise ConfigError(f"ema.ramp_steps must be >= 0, got {ramp_steps!r}")
    ema = AveragedModel(net, multi_avg_fn=ema_multi_avg_fn(decay, ramp_steps), use_buffers=True)
    ema.requires_grad_(False)
    return ema


def update_average(ema: AveragedModel, net: torch.nn.Module) -> None:
    """``ema.update_parameters(net)``; on a CPU in one thread. The update is a few hundred memory-bound
    per-tensor lerps: with more threads each waits at an OpenMP barrier, which on a busy 2-core machine
    cost 0.5-0.8 s per update (convnext_atto default) against 5-20 ms in one thread."""
    on_cpu = next(net.parameters()).device.type == "cpu"
    threads = torch.get_num_threads()
    if on_cpu and threads > 1:
        torch.set_num_threads(1)
    try:
        ema.update_parameters(net)
    finally:
        if on_cpu and threads > 1:
            torch.set_num_threads(threads)
