"""Semantic segmentation metrics (torchmetrics), ignoring IGNORE_INDEX pixels.

Dice is reported as the pixel-wise macro F1 score, which is the same quantity.
"""

from __future__ import annotations

import torch
from torchmetrics.aggregation import SumMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassJaccardIndex

from fourm21.data.sample import IGNORE_INDEX
from fourm21.metrics.classification import LOCAL


class SegmentationMetrics:
    """The semantic head (``sem``): reads the decoded ``semantic`` map of each image."""

    def __init__(self, num_classes: int) -> None:
        kw = {"num_classes": num_classes, "ignore_index": IGNORE_INDEX, **LOCAL}
        self.iou = MulticlassJaccardIndex(average="macro", **kw)
        self.dice = MulticlassF1Score(average="macro", **kw)
        self.pixel_acc = MulticlassAccuracy(average="micro", **kw)
        self.images = SumMetric(**LOCAL)

    @property
    def count(self) -> int:
        """Images scored (all processes' after a sync)."""
        return int(self.images.sum_value)

    def reset(self) -> None:
        for m in (self.iou, self.dice, self.pixel_acc, self.images):
            m.reset()

    def add(self, preds: list[dict[str, torch.Tensor]], batch: dict) -> None:
        """One batch: the predicted maps of the images that carry a semantic target."""
        if "semantic" in preds[0]:
            has = batch["has_semantic"].cpu()
            pred = torch.stack([p["semantic"] for p in preds]).cpu()
            self.update(pred[has], batch["semantic"].cpu()[has])

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: (N, H, W) class ids."""
        if len(target):
            self.images.update(float(len(target)))
            pred, target = pred.cpu().flatten().long(), target.cpu().flatten().long()
            for m in (self.iou, self.dice, self.pixel_acc):
                m.update(pred, target)

    def compute(self) -> dict[str, float]:
        if not self.count:
            return {}
        return {"miou": float(self.iou.compute()), "dice": float(self.dice.compute()),
                "pixel_acc": float(self.pixel_acc.compute())}
