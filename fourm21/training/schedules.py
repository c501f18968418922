"""Learning-rate schedules, stepped once per optimiser step (``optim.scheduler._target_``)."""

from __future__ import annotations

import math

import torch


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_frac: float,
                  warmup_steps: int | None, min_lr_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps`` (or ``warmup_frac`` of ``total_steps``), then a cosine from the
    base learning rate down to ``min_lr_ratio`` times it at ``total_steps``."""
    total = max(int(total_steps), 1)
    warmup = min(int(warmup_steps or warmup_frac * total), total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(warmup, 1)
        t = (step - warmup) / max(total - warmup, 1)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
