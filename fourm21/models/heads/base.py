"""The one interface every head implements: features in, raw tensors out. Everything else about its task kind
(loss, decoding, metrics, outputs) is the task module's that names this class (``fourm21/tasks/``)."""

from __future__ import annotations

import torch
from torch import nn


class Head(nn.Module):
    """A task head.

    ``name``      its key under ``model.heads`` (set by ``build_model``): the key of its raw output.
    ``source``    which features it reads: ``"backbone"`` (raw backbone levels) or ``"neck"``
                  (fused neck levels at the head's ``strides``).
    ``uses_text`` its forward takes the batch's caption tokens (``text=``).
    ``fusion_context`` its ``logits`` are class scores that the cross-task fusion turns into context.

    A head only maps features to raw outputs; its task (``fourm21.tasks``, found through the head's class)
    holds its loss, decoding, metrics and outputs, reading the head's settings from the head.
    """

    name: str = ""
    source: str = "neck"
    strides: list[int] = []
    uses_text: bool = False
    fusion_context: bool = False

    def forward(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError
