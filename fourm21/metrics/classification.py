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

# every torchmetrics metric here syncs only when the evaluator says so (``MultiTaskEvaluator.gather``: one
# collective point), never inside a compute() that a plot on one process may call
LOCAL = {"sync_on_compute": False}


class ClassificationMetrics:
    """The softmax head (``cls``): reads ``class_label`` / ``class_probs`` of the decoded predictions."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.acc = MulticlassAccuracy(num_classes, average="micro", **LOCAL)
        self.macro = {"precision_macro": MulticlassPrecision(num_classes, average="macro", **LOCAL),
                      "recall_macro": MulticlassRecall(num_classes, average="macro", **LOCAL),
                      "f1_macro": MulticlassF1Score(num_classes, average="macro", **LOCAL)}
        self.per_class = {"precision": MulticlassPrecision(num_classes, average=None, **LOCAL),
                          "recall": MulticlassRecall(num_classes, average=None, **LOCAL),
                          "f1": MulticlassF1Score(num_classes, average=None, **LOCAL)}
        self.confusion = MulticlassConfusionMatrix(num_classes, **LOCAL)
        self.pr_curve = MulticlassPrecisionRecallCurve(num_classes, thresholds=101, **LOCAL)

    @property
    def count(self) -> int:
        """Images scored (all processes' after a sync): the confusion matrix's total."""
        return int(self.confusion.confmat.sum())

    def add(self, preds: list[dict[str, torch.Tensor]], batch: dict) -> None:
        """One batch: its decoded predictions against the labels of the images that carry one."""
        if "class_label" in preds[0]:
            has = batch["has_label"].cpu()
            pred = torch.stack([p["class_label"] for p in preds]).cpu()
            probs = torch.stack([p["class_probs"] for p in preds]).cpu()
            self.update(pred[has], batch["label"].cpu()[has], probs[has])

    def _all(self) -> list:
        return [self.acc, *self.macro.values(), *self.per_class.values(), self.confusion]

    def reset(self) -> None:
        for m in (*self._all(), self.pr_curve):
            m.reset()

    def update(self, pred: torch.Tensor, target: torch.Tensor, probs: torch.Tensor | None = None) -> None:
        """pred, target: (N,) class ids; probs: (N, K) class probabilities (for PR curves)."""
        if len(target):
            pred, target = pred.cpu(), target.cpu()
            for m in self._all():
                m.update(pred, target)
            if probs is not None:
                self.pr_curve.update(probs.cpu().float(), target)

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
