"""Image classification metrics (torchmetrics): accuracy, macro F1, confusion matrix."""

from __future__ import annotations

import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score


class ClassificationMetrics:
    def __init__(self, num_classes: int) -> None:
        self.acc = MulticlassAccuracy(num_classes, average="micro")
        self.f1 = MulticlassF1Score(num_classes, average="macro")
        self.confusion = MulticlassConfusionMatrix(num_classes)
        self.count = 0

    def reset(self) -> None:
        for m in (self.acc, self.f1, self.confusion):
            m.reset()
        self.count = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: (N,) class ids."""
        if len(target):
            pred, target = pred.cpu(), target.cpu()
            for m in (self.acc, self.f1, self.confusion):
                m.update(pred, target)
            self.count += len(target)

    def compute(self) -> dict[str, float]:
        if not self.count:
            return {}
        return {"acc": float(self.acc.compute()), "f1_macro": float(self.f1.compute())}
