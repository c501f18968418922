"""Plots people would rather look at than read: loss curves, confusion matrices, precision-recall curves.

Matplotlib's object-oriented API only (no pyplot, no backend switch), so importing or calling this never
changes the user's backend; pictures of predictions are drawn by ``fourm21.inference.render``."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from fourm21.metrics.detection_errors import DetectionErrors


def subplots(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] | None = None, **kwargs: Any
             ) -> tuple[Figure, Any]:
    """``plt.subplots`` without pyplot: a Figure no backend and no global figure list knows of, so plotting
    never switches the user's backend or opens a window; ``fig.savefig`` renders it with Agg regardless."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def plot_loss_curves(metrics_csv: str | Path, out_file: str | Path) -> Path | None:
    """Train loss per step and every val metric per epoch, from Lightning's CSV log."""
    metrics_csv = Path(metrics_csv)
    if not metrics_csv.is_file():
        return None
    with metrics_csv.open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    def series(key: str, x_key: str = "step") -> tuple[list[float], list[float]]:
        xs, ys = [], []
        for r in rows:
            if r.get(key) not in (None, "") and r.get(x_key) not in (None, ""):
                xs.append(float(r[x_key]))
                ys.append(float(r[key]))
        return xs, ys
    keys = list(rows[0])
    train_keys = sorted(k for k in keys if k.startswith("train/") and k.endswith("loss_step"))
    val_loss_keys = sorted(k for k in keys if k.startswith("val/") and k.endswith("/loss"))
    val_keys = sorted(k for k in keys if k.startswith("val/") and "loss" not in k and k.count("/") == 2)
    fig, axes = subplots(1, 2, figsize=(12, 4.5))
    for k in train_keys:
        xs, ys = series(k)
        if xs:
            axes[0].plot(xs, ys, label=k.removesuffix("_step"), lw=1.4 if k == "train/loss_step" else 0.8)
    for k in val_loss_keys:
        xs, ys = series(k)
        if xs:
            axes[0].plot(xs, ys, "o--", ms=3, lw=0.8, label=k)
    axes[0].set(xlabel="step", ylabel="loss", title="losses (train per step, val per validation)", yscale="log")
    if axes[0].lines:
        axes[0].legend(fontsize=7, ncol=2)
    for k in val_keys:
        xs, ys = series(k, "epoch")
        if xs:
            axes[1].plot(xs, ys, marker="o", ms=3, label=k[4:])
    axes[1].set(xlabel="epoch", ylabel="value", title="validation metrics", ylim=(0, 1.02))
    if axes[1].lines:
        axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out_file, dpi=110)
    return Path(out_file)


def plot_confusion_matrix(matrix: torch.Tensor, class_names: Sequence[str], out_file: str | Path,
                          title: str = "confusion matrix (val)") -> Path:
    """Row-normalised confusion matrix with counts in the cells."""
    m = matrix.cpu().numpy().astype(float)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    n = len(class_names)
    fig, ax = subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.6 * n))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(out_file, dpi=110)
    return Path(out_file)


def plot_pr_curves(evaluators: list, class_names_per_set: list[Sequence[str]], out_file: str | Path) -> Path | None:
    """Precision-recall: boxes and masks (COCOeval, IoU 0.5 and 0.75, all areas, mean over classes)
    and image classes (one-vs-rest, torchmetrics)."""
    panels = []
    for ev, names in zip(evaluators, class_names_per_set):
        for head, coco_ev in ev.coco_evals.items():
            if coco_ev is not None:
                panels.append(("coco", ev.coco[head], coco_ev, names))
        for part in ev.parts.values():  # image-level heads that keep a precision-recall curve
            if hasattr(part, "pr_curve") and part.count:
                panels.append(("curve", "", part, names))
    if not panels:
        return None
    fig, axes = subplots(1, len(panels), figsize=(4.5 * len(panels), 4.2), squeeze=False)
    recall_grid = np.linspace(0, 1, 101)
    for ax, (kind, iou_type, obj, names) in zip(axes.flat, panels):
        if kind == "coco":
            prec = obj.eval["precision"]  # (T, R, K, A, M)
            for t_idx, iou in ((0, 0.5), (5, 0.75)):
                p = prec[t_idx, :, :, 0, -1]
                valid = (p > -1).all(0)
                if valid.any():
                    ax.plot(recall_grid, p[:, valid].mean(1), label=f"IoU {iou}")
            ax.set_title(f"{'boxes' if iou_type == 'bbox' else 'masks'}: precision-recall (mean over classes)",
                         fontsize=9)
        else:
            precision, recall, _ = obj.pr_curve.compute()
            for k, (pk, rk) in enumerate(zip(precision, recall)):
                ax.plot(rk.numpy(), pk.numpy(), lw=0.9, label=names[k] if k < len(names) else str(k))
            ax.set_title("image classes: precision-recall", fontsize=9)
        ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_file, dpi=110)
    return Path(out_file)


def plot_detection_confusion(errors: DetectionErrors, out_file: str | Path, stage: str = "val") -> Path:
    """The detection confusion matrix (classes + background) of ``fourm21.metrics.detection_errors``: the
    background row holds false detections, the background column missed objects."""
    kind = "boxes" if errors.iou_type == "bbox" else "masks"
    title = f"{kind} ({stage})\nIoU >= {errors.iou_thr:g}, score >= {errors.score_thr:g}"
    return plot_confusion_matrix(torch.as_tensor(errors.matrix), errors.class_names, out_file, title=title)
