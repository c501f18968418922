"""One weighted sum of the task losses: fixed weights, or learned uncertainty weighting.

Uncertainty weighting follows Kendall et al. 2018: with s_t = log(sigma_t^2) learned per task,
L = sum_t w_t * (exp(-s_t) * L_t + s_t) / 2. Tasks absent from a batch add nothing.
"""

from __future__ import annotations

import torch
from torch import nn

from fourm21.errors import ConfigError

WEIGHTINGS = ("fixed", "uncertainty")


class MultiTaskLoss(nn.Module):
    def __init__(self, weights: dict[str, float] | None = None, weighting: str = "fixed") -> None:
        super().__init__()
        if weighting not in WEIGHTINGS:
            raise ConfigError(f"loss.weighting: '{weighting}' is not one of {WEIGHTINGS}")
        self.weights = dict(weights or {})
        for task, w in self.weights.items():
            if w < 0:
                raise ConfigError(f"loss.weights.{task}: must be >= 0, got {w}")
        self.weighting = weighting
        self.log_vars = nn.ParameterDict(
            {t: nn.Parameter(torch.zeros(())) for t in self.weights} if weighting == "uncertainty" else {})

    def forward(self, task_losses: dict[str, dict[str, torch.Tensor]]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """{task: {part: scalar}} -> (total, flat logs ``task/loss_<part>``, ``task/loss`` and ``loss``)."""
        total = None
        logs: dict[str, torch.Tensor] = {}
        for task, parts in task_losses.items():
            task_loss = sum(parts.values())
            for part, value in parts.items():
                logs[f"{task}/loss_{part}"] = value.detach()
            logs[f"{task}/loss"] = task_loss.detach()
            w = self.weights.get(task, 1.0)
            if self.weighting == "uncertainty" and task in self.log_vars:
                s = self.log_vars[task]
                weighted = w * 0.5 * (torch.exp(-s) * task_loss + s)
                logs[f"{task}/sigma"] = torch.exp(0.5 * s).detach()
            else:
                weighted = w * task_loss
            total = weighted if total is None else total + weighted
        if total is None:
            raise ValueError("no task in this batch has targets: every sample lacks every enabled head's labels")
        logs["loss"] = total.detach()
        return total, logs
