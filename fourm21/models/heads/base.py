"""The one interface every head implements, so adding a head is one file plus one config entry."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Head(nn.Module):
    """A task head.

    ``name``      task key in the model output, losses and metrics (``cls``, ``det`` ...).
    ``source``    which features it reads: ``"backbone"`` (raw backbone levels) or ``"neck"``
                  (fused neck levels at the head's ``strides``).
    ``requires``  heads whose raw output or loss cache this head's loss uses.

    Decoding raw outputs into predictions is not a head's job: ``fourm21.inference.decode`` holds one
    decoder per head ``name`` (the class attribute), shared by validation, predict, the API and export.
    """

    name: str = ""
    source: str = "neck"
    requires: tuple[str, ...] = ()
    strides: list[int] = []

    def forward(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def loss(self, outputs: dict[str, dict[str, torch.Tensor]], batch: dict[str, Any],
             cache: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Named scalar losses over the samples that carry this task's target; {} when none do.

        ``outputs`` holds every head's raw output; ``cache`` passes shared work (e.g. the
        detection assignment) between heads within one step.
        """
        raise NotImplementedError  # pragma: no cover - interface
