"""The one interface every head implements. Adding a head: one file here, its loss function in
``fourm21/losses/heads.py``, its decoder in ``fourm21/inference/decode.py`` and one config entry."""

from __future__ import annotations

import torch
from torch import nn


class Head(nn.Module):
    """A task head.

    ``name``      task key in the model output, losses and metrics (``cls``, ``det`` ...).
    ``source``    which features it reads: ``"backbone"`` (raw backbone levels) or ``"neck"``
                  (fused neck levels at the head's ``strides``).
    ``requires``  heads whose raw output or loss cache this head's loss uses (their losses run first).

    A head only maps features to raw outputs. Its loss is not its job: ``fourm21.losses.heads`` holds one
    loss function per head ``name`` (the class attribute), reading the head's settings from the head, as
    decoding raw outputs into predictions lives in ``fourm21.inference.decode`` (one decoder per head
    ``name``, shared by validation, predict, the API and export).
    """

    name: str = ""
    source: str = "neck"
    requires: tuple[str, ...] = ()
    strides: list[int] = []

    def forward(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

