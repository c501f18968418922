"""Metrics for the attribute heads (per group) and the multi-label head (with threshold tuning)."""

from __future__ import annotations

import torch
from torchmetrics.aggregation import CatMetric, SumMetric
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MultilabelAveragePrecision,
    MultilabelF1Score,
)

from fourm21.metrics.classification import LOCAL


class AttributeMetrics:
    """An attribute head: accuracy and macro F1 per group over the images where it is known. Keys: ``.<group>/acc``,
    ``.<group>/f1_macro`` (the head's name goes in front: ``attr.colour/acc``) and ``/acc_mean``, ``/f1_macro_mean``."""

    def __init__(self, groups: dict[str, int]) -> None:
        self.groups = dict(groups)
        self.metrics = {g: (MulticlassAccuracy(n, average="micro", ignore_index=-1, **LOCAL),
                            MulticlassF1Score(n, average="macro", ignore_index=-1, **LOCAL))
                        for g, n in self.groups.items()}
        self.known = {g: SumMetric(**LOCAL) for g in self.groups}  # images with the attribute known

    def reset(self) -> None:
        for g, ms in self.metrics.items():
            for m in (*ms, self.known[g]):
                m.reset()

    def update(self, group: str, pred: torch.Tensor, target: torch.Tensor) -> None:
        if group in self.metrics and (target >= 0).any():
            for m in self.metrics[group]:
                m.update(pred.cpu(), target.cpu())
            self.known[group].update(float((target >= 0).sum()))

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for g, (acc, f1) in self.metrics.items():
            if int(self.known[g].sum_value):
                out[f".{g}/acc"] = float(acc.compute())
                out[f".{g}/f1_macro"] = float(f1.compute())
        accs = [v for k, v in out.items() if k.endswith("/acc")]
        if accs:
            out["/acc_mean"] = sum(accs) / len(accs)
            f1s = [v for k, v in out.items() if k.endswith("/f1_macro")]
            out["/f1_macro_mean"] = sum(f1s) / len(f1s)
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
        # every image's probabilities and targets (thresholds are tuned on all of them): torchmetrics' "cat"
        # states, concatenated over processes by their own sync
        self.probs, self.targets = CatMetric(**LOCAL), CatMetric(**LOCAL)
        self.images = SumMetric(**LOCAL)

    @property
    def count(self) -> int:
        """Images scored (all processes' after a sync)."""
        return int(self.images.sum_value)

    def reset(self) -> None:
        for m in (self.probs, self.targets, self.images):
            m.reset()

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        if len(target):
            self.probs.update(probs.float().cpu())
            self.targets.update(target.float().cpu())
            self.images.update(float(len(target)))

    def compute(self, current: torch.Tensor | None = None) -> dict[str, float]:
        if not self.count:
            return {}
        probs, target = self.probs.compute(), self.targets.compute().long()
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
