"""A task kind that exists only in the tests: the mean brightness of an image, as an image-level regression.

It is what "Add a task" in docs/architecture.md asks for and nothing more: a head class, a ``Task`` subclass
registered with ``fourm21.tasks.register``, and one config entry naming the head
(``+model.heads.bright={_target_: tests.tasks.brightness.BrightnessHead, ...}``). No file of the package
names it; tests/tasks/test_new_task.py runs it through every CLI.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics import MeanAbsoluteError

from fourm21.models.heads.base import Head
from fourm21.tasks import Task, register


class BrightnessHead(Head):
    """The top backbone level, pooled, through a small MLP: (B,) predicted brightness in [0, 1]."""

    source = "backbone"

    def __init__(self, in_channels: list[int], hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_channels[-1], hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"value": self.mlp(feats[-1].mean(dim=(2, 3)))[:, 0]}


def brightness_of(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 images (as batches hold them) -> (B,) mean intensity in [0, 1]: the target."""
    return images.float().mean(dim=(1, 2, 3)) / 255.0


class BrightnessMetrics:
    """Mean absolute error of the predicted brightness (a torchmetrics state, so DDP syncs it)."""

    def __init__(self) -> None:
        self.mae = MeanAbsoluteError(sync_on_compute=False)
        self.count = 0

    def reset(self) -> None:
        self.mae.reset()
        self.count = 0

    def add(self, preds: list[dict[str, torch.Tensor]], batch: dict) -> None:
        pred = torch.stack([p["brightness"] for p in preds]).cpu()
        self.mae.update(pred, brightness_of(batch["image"]).cpu())
        self.count += len(pred)

    def compute(self) -> dict[str, float]:
        return {"mae": float(self.mae.compute())} if self.count else {}


@register
class BrightnessTask(Task):
    kind = "bright"
    head = BrightnessHead
    decoded_keys = ("brightness",)

    def loss(self, name: str, head: Any, outputs, batch: dict[str, Any], cache: dict[str, Any]) -> dict:
        return {"mse": F.mse_loss(outputs[name]["value"].float(), brightness_of(batch["image"]))}

    def decode(self, name: str, outputs, decoded, image_size, settings) -> dict[str, torch.Tensor]:
        return {"brightness": outputs[name]["value"].float().clamp(0, 1)}

    def split(self, decoded, preds, image_size, settings, shared) -> None:
        if "brightness" in decoded:
            for i, p in enumerate(preds):
                p["brightness"] = decoded["brightness"][i]

    def metrics(self, name: str, heads: list[Any], dataset: Any, tune: bool) -> BrightnessMetrics:
        return BrightnessMetrics()

    def image_entry(self, pred: dict[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
        return {"brightness": round(float(pred["brightness"]), 5)} if "brightness" in pred else {}
