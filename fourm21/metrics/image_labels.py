"""Metrics for the attribute heads (per group) and the multi-label head (with threshold tuning)."""

from __future__ import annotations

import torch
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MultilabelAveragePrecision,
    MultilabelF1Score,
)


class AttributeMetrics:
    """Accuracy and macro F1 per attribute group over the images where the attribute is known."""

    def __init__(self, groups: dict[str, int]) -> None:
        self.groups = dict(groups)
        self.metrics = {g: (MulticlassAccuracy(n, average="micro", ignore_index=-1),
                            MulticlassF1Score(n, average="macro", ignore_index=-1)) for g, n in self.groups.items()}
        self.count = {g: 0 for g in self.groups}

    def reset(self) -> None:
        for g, ms in self.metrics.items():
            for m in ms:
                m.reset()
            self.count[g] = 0

    def update(self, group: str, pred: torch.Tensor, target: torch.Tensor) -> None:
        if group in self.metrics and (target >= 0).any():
            for m in self.metrics[group]:
                m.update(pred.cpu(), target.cpu())
            self.count[group] += int((target >= 0).sum())

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for g, (acc, f1) in self.metrics.items():
            if self.count[g]:
                out[f"attr.{g}/acc"] = float(acc.compute())
                out[f"attr.{g}/f1_macro"] = float(f1.compute())
        accs = [v for k, v in out.items() if k.endswith("/acc")]
        if accs:
            out["attr/acc_mean"] = sum(accs) / len(accs)
            f1s = [v for k, v in out.items() if k.endswith("/f1_macro")]
            out["attr/f1_macro_mean"] = sum(f1s) / len(f1s)
        return out


def samples_f1(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over images of the F1 between predicted and true label sets (1 when both are empty)."""
    tp = (pred & target).sum(1).float()
    denom = pred.sum(1).float() + target.sum(1).float()
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.ones_like(tp))
    return float(f1.mean())


def tune_thresholds(probs: torch.Tensor, target: torch.Tensor, mode: str = "per_class") -> torch.Tensor:
    """Thresholds on a 0.05-0.95 grid that maximise F1: one per class (``per_class``) or one for all (``global``).

    Where several thresholds tie for the best F1, the middle one is taken: the widest margin."""
    grid = torch.linspace(0.05, 0.95, 19)
    target = target.bool()
    if mode == "global":
        scores = [float(MultilabelF1Score(target.shape[1], threshold=float(t), average="micro")(probs, target.long()))
                  for t in grid]
        s = torch.tensor(scores)
        best = (s >= s.max() - 1e-9).nonzero().flatten()
        return torch.full((target.shape[1],), float(grid[best[len(best) // 2]]))
    pred = probs[None] > grid[:, None, None]  # (G, N, C)
    tp = (pred & target[None]).sum(1).float()
    f1 = 2 * tp / (pred.sum(1) + target[None].sum(1)).clamp(min=1)  # (G, C)
    best = f1 >= f1.max(0, keepdim=True).values - 1e-9  # (G, C)
    idx = [int(best[:, c].nonzero().flatten()[int(best[:, c].sum()) // 2]) for c in range(f1.shape[1])]
    return grid[torch.tensor(idx)]


class MultiLabelMetrics:
    """Micro, macro and samples F1 at the decision thresholds, and mAP over classes.

    ``tune`` ('per_class', 'global' or 'none') picks the thresholds on the evaluated set first;
    the metrics are then reported at those thresholds and ``thresholds`` holds them.
    """

    def __init__(self, num_classes: int, tune: str = "per_class", default: float = 0.5) -> None:
        self.num_classes = num_classes
        self.tune = tune
        self.thresholds = torch.full((num_classes,), default)
        self.reset()

    def reset(self) -> None:
        self.probs: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        if len(target):
            self.probs.append(probs.float().cpu())
            self.targets.append(target.cpu())

    def compute(self, current: torch.Tensor | None = None) -> dict[str, float]:
        if not self.probs:
            return {}
        probs, target = torch.cat(self.probs), torch.cat(self.targets).long()
        if self.tune != "none":
            self.thresholds = tune_thresholds(probs, target, self.tune)
        elif current is not None:
            self.thresholds = current.cpu()
        pred = (probs > self.thresholds).long()
        c = self.num_classes
        return {"f1_micro": float(MultilabelF1Score(c, average="micro")(pred, target)),
                "f1_macro": float(MultilabelF1Score(c, average="macro")(pred, target)),
                "f1_samples": samples_f1(pred.bool(), target.bool()),
                "map": float(MultilabelAveragePrecision(c, average="macro")(probs, target)),
                "threshold_mean": float(self.thresholds.mean())}
