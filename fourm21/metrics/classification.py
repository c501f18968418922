"""Image classification metrics (torchmetrics): accuracy, macro P/R/F1, per-class table, confusion, PR curves."""

from __future__ import annotations

import torch
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassPrecisionRecallCurve,
    MulticlassRecall,
)


class ClassificationMetrics:
    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.acc = MulticlassAccuracy(num_classes, average="micro")
        self.macro = {"precision_macro": MulticlassPrecision(num_classes, average="macro"),
                      "recall_macro": MulticlassRecall(num_classes, average="macro"),
                      "f1_macro": MulticlassF1Score(num_classes, average="macro")}
        self.per_class = {"precision": MulticlassPrecision(num_classes, average=None),
                          "recall": MulticlassRecall(num_classes, average=None),
                          "f1": MulticlassF1Score(num_classes, average=None)}
        self.confusion = MulticlassConfusionMatrix(num_classes)
        self.pr_curve = MulticlassPrecisionRecallCurve(num_classes, thresholds=101)
        self.count = 0

    def _all(self) -> list:
        return [self.acc, *self.macro.values(), *self.per_class.values(), self.confusion]

    def reset(self) -> None:
        for m in (*self._all(), self.pr_curve):
            m.reset()
        self.count = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor, probs: torch.Tensor | None = None) -> None:
        """pred, target: (N,) class ids; probs: (N, K) class probabilities (for PR curves)."""
        if len(target):
            pred, target = pred.cpu(), target.cpu()
            for m in self._all():
                m.update(pred, target)
            if probs is not None:
                self.pr_curve.update(probs.cpu().float(), target)
            self.count += len(target)

    def compute(self) -> dict[str, float]:
        if not self.count:
            return {}
        out = {"acc": float(self.acc.compute())}
        out.update({k: float(m.compute()) for k, m in self.macro.items()})
        return out

    def per_class_table(self) -> dict[str, list[float]]:
        """{'precision': [...], 'recall': [...], 'f1': [...], 'support': [...]}, one value per class."""
        table = {k: m.compute().tolist() for k, m in self.per_class.items()}
        table["support"] = self.confusion.compute().sum(1).tolist()
        return table
