"""Semantic segmentation metrics (torchmetrics), ignoring IGNORE_INDEX pixels.

Dice is reported as the pixel-wise macro F1 score, which is the same quantity.
"""

from __future__ import annotations

import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassJaccardIndex

from fourm21.data.sample import IGNORE_INDEX


class SegmentationMetrics:
    def __init__(self, num_classes: int) -> None:
        kw = {"num_classes": num_classes, "ignore_index": IGNORE_INDEX}
        self.iou = MulticlassJaccardIndex(average="macro", **kw)
        self.dice = MulticlassF1Score(average="macro", **kw)
        self.pixel_acc = MulticlassAccuracy(average="micro", **kw)
        self.count = 0

    def reset(self) -> None:
        for m in (self.iou, self.dice, self.pixel_acc):
            m.reset()
        self.count = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: (N, H, W) class ids."""
        if len(target):
            pred, target = pred.cpu().flatten().long(), target.cpu().flatten().long()
            for m in (self.iou, self.dice, self.pixel_acc):
                m.update(pred, target)
            self.count += 1

    def compute(self) -> dict[str, float]:
        if not self.count:
            return {}
        return {"miou": float(self.iou.compute()), "dice": float(self.dice.compute()),
                "pixel_acc": float(self.pixel_acc.compute())}
