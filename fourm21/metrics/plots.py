"""Plots people would rather look at than read: loss curves, confusion matrix, predictions on images."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from fourm21.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from fourm21.metrics.detection_errors import DetectionErrors, ImageErrors  # noqa: E402

PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
                    [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128],
                    [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0], [170, 255, 195]]) / 255.0


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
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
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
    plt.close(fig)
    return Path(out_file)


def plot_confusion_matrix(matrix: torch.Tensor, class_names: Sequence[str], out_file: str | Path,
                          title: str = "confusion matrix (val)") -> Path:
    """Row-normalised confusion matrix with counts in the cells."""
    m = matrix.cpu().numpy().astype(float)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.6 * n))
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
    plt.close(fig)
    return Path(out_file)


def denormalize(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) uint8 pixels or normalised floats -> (H, W, 3) float image in [0, 1]."""
    if image.dtype == torch.uint8:
        return image.cpu().permute(1, 2, 0).numpy().astype(np.float32) / 255.0
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return (image.cpu().float() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def tint_masks(image: np.ndarray, pred: dict[str, torch.Tensor], score_thr: float, semantic: bool
               ) -> tuple[np.ndarray, torch.Tensor]:
    """(H, W, 3) float image in [0, 1] with instance masks (and, with ``semantic``, the semantic map) tinted
    in their class colours; also the (N,) flags of the detections at or above ``score_thr``."""
    shown = image.copy()
    if semantic and "semantic" in pred:
        sem = pred["semantic"].cpu().numpy()
        fg = (sem > 0) & (sem != 255)
        shown[fg] = 0.6 * shown[fg] + 0.4 * PALETTE[(sem[fg] - 1) % len(PALETTE)]
    keep = (pred["scores"] >= score_thr).cpu() if "scores" in pred else torch.zeros(0, dtype=torch.bool)
    if "masks" in pred:
        for k, mask in enumerate(pred["masks"].cpu()[keep]):
            colour = PALETTE[int(pred["labels"].cpu()[keep][k]) % len(PALETTE)]
            shown[mask.numpy()] = 0.45 * shown[mask.numpy()] + 0.55 * colour
    return shown, keep


def draw_prediction(ax: plt.Axes, image: np.ndarray, pred: dict[str, torch.Tensor], class_names: Sequence[str],
                    image_class_names: Sequence[str] = (), score_thr: float = 0.3, semantic: bool = False,
                    topk: bool = False) -> None:
    """Image with coloured instance masks, boxes labelled with class and score, and the image class
    (with ``topk``: its top-5 probabilities); ``semantic`` tints each pixel by its semantic class."""
    shown, keep = tint_masks(image, pred, score_thr, semantic)
    ax.imshow(shown)
    if "boxes" in pred:
        for box, label, score in zip(pred["boxes"].cpu()[keep], pred["labels"].cpu()[keep], pred["scores"].cpu()[keep]):
            x0, y0, x1, y1 = box.tolist()
            colour = PALETTE[int(label) % len(PALETTE)]
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color=colour, lw=1.2))
            name = class_names[int(label)] if int(label) < len(class_names) else str(int(label))
            ax.text(x0, y0, f"{name} {float(score):.2f}", fontsize=6, color="white",
                    bbox={"facecolor": colour, "alpha": 0.8, "pad": 0.5, "lw": 0})
    if "class_label" in pred:
        def label(k: int) -> str:
            return image_class_names[k] if k < len(image_class_names) else str(k)
        if topk and "class_topk" in pred:
            text = ", ".join(f"{label(int(k))} {float(p):.2f}"
                             for k, p in zip(pred["class_topk"], pred["class_topk_probs"]))
            ax.set_title(text, fontsize=8)
        else:
            k = int(pred["class_label"])
            ax.set_title(f"{label(k)} ({float(pred['class_probs'][k]):.2f})", fontsize=8)
    ax.axis("off")


def _overlay_figure(image: np.ndarray, pred: dict[str, torch.Tensor], class_names: Sequence[str],
                    image_class_names: Sequence[str], score_thr: float, semantic: bool,
                    caption_lines: Sequence[str]) -> plt.Figure:
    """The figure ``save_overlay`` writes: the image at its own size, ~400 px at least."""
    h, w = image.shape[:2]
    zoom = max(1.0, 400 / max(h, w))  # small images are enlarged to ~400 px on the long side
    fig_h = h * zoom / 100 + 0.35
    fig = plt.figure(figsize=(w * zoom / 100, fig_h), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1 - 0.35 / fig_h))
    draw_prediction(ax, image.astype(np.float32) / 255.0, pred, class_names, image_class_names, score_thr,
                    semantic=semantic, topk=True)
    for k, line in enumerate(caption_lines):  # attributes and multi-labels, top left
        ax.text(0.01, 0.99 - 0.06 * k, line, transform=ax.transAxes, fontsize=8, va="top", color="white",
                bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "lw": 0})
    return fig


def save_overlay(image: np.ndarray, pred: dict[str, torch.Tensor], class_names: Sequence[str],
                 image_class_names: Sequence[str], out_file: str | Path, score_thr: float = 0.3,
                 semantic: bool = False, caption_lines: Sequence[str] = ()) -> Path:
    """One image's predictions drawn at its own size (uint8 RGB input), as a PNG."""
    fig = _overlay_figure(image, pred, class_names, image_class_names, score_thr, semantic, caption_lines)
    fig.savefig(out_file)
    plt.close(fig)
    return Path(out_file)


def plot_prediction_grid(images: torch.Tensor, preds: list[dict[str, torch.Tensor]], class_names: Sequence[str],
                         image_class_names: Sequence[str], out_file: str | Path, score_thr: float = 0.4) -> Path:
    """Grid of predictions (boxes, masks, image class) on a batch of normalised images."""
    n = len(preds)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (img, pred) in enumerate(zip(images, preds)):
        draw_prediction(axes.flat[i], denormalize(img), pred, class_names, image_class_names, score_thr)
    fig.tight_layout()
    fig.savefig(out_file, dpi=130)
    plt.close(fig)
    return Path(out_file)


def plot_pr_curves(evaluators: list, class_names_per_set: list[Sequence[str]], out_file: str | Path) -> Path | None:
    """Precision-recall: boxes and masks (COCOeval, IoU 0.5 and 0.75, all areas, mean over classes)
    and image classes (one-vs-rest, torchmetrics)."""
    panels = []
    for ev, names in zip(evaluators, class_names_per_set):
        for task, coco_ev in ev.coco_evals.items():
            if coco_ev is not None:
                panels.append(("coco", task, coco_ev, names))
        if ev.cls is not None and ev.cls.count:
            panels.append(("cls", "cls", ev.cls, names))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.2), squeeze=False)
    recall_grid = np.linspace(0, 1, 101)
    for ax, (kind, task, obj, names) in zip(axes.flat, panels):
        if kind == "coco":
            prec = obj.eval["precision"]  # (T, R, K, A, M)
            for t_idx, iou in ((0, 0.5), (5, 0.75)):
                p = prec[t_idx, :, :, 0, -1]
                valid = (p > -1).all(0)
                if valid.any():
                    ax.plot(recall_grid, p[:, valid].mean(1), label=f"IoU {iou}")
            ax.set_title(f"{'boxes' if task == 'det' else 'masks'}: precision-recall (mean over classes)", fontsize=9)
        else:
            precision, recall, _ = obj.pr_curve.compute()
            for k, (pk, rk) in enumerate(zip(precision, recall)):
                ax.plot(rk.numpy(), pk.numpy(), lw=0.9, label=names[k] if k < len(names) else str(k))
            ax.set_title("image classes: precision-recall", fontsize=9)
        ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_file, dpi=110)
    plt.close(fig)
    return Path(out_file)


def plot_detection_confusion(errors: DetectionErrors, out_file: str | Path, stage: str = "val") -> Path:
    """The detection confusion matrix (classes + background) of ``fourm21.metrics.detection_errors``: the
    background row holds false detections, the background column missed objects."""
    kind = "boxes" if errors.iou_type == "bbox" else "masks"
    title = f"{kind} ({stage})\nIoU >= {errors.iou_thr:g}, score >= {errors.score_thr:g}"
    return plot_confusion_matrix(torch.as_tensor(errors.matrix), errors.class_names, out_file, title=title)


def plot_worst_images(panels: Sequence[tuple[np.ndarray, dict[str, torch.Tensor], ImageErrors]],
                      class_names: Sequence[str], out_file: str | Path, score_thr: float = 0.25) -> Path:
    """A grid of the images with the most errors: each (H, W, 3) uint8 image with its predictions (original
    pixels, at or above ``score_thr``, drawn as ``draw_prediction`` draws them), missed objects outlined
    dashed red, false detections dashed black, wrong-class detections labelled with the true class."""
    def name(k: int) -> str:
        return class_names[k] if k < len(class_names) else str(k)

    n = len(panels)
    cols = min(4, max(n, 1))
    rows = max(math.ceil(n / cols), 1)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image, pred, errs) in zip(axes.flat, panels):
        draw_prediction(ax, image.astype(np.float32) / 255.0, pred, class_names, score_thr=score_thr)
        for (x0, y0, x1, y1), true in errs.missed:
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="red", lw=1.6, ls="--"))
            ax.text(x0, y1, f"missed {name(true)}", fontsize=6, color="white", va="top",
                    bbox={"facecolor": "red", "alpha": 0.8, "pad": 0.5, "lw": 0})
        for (x0, y0, x1, y1), _ in errs.false:
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="black", lw=1.4, ls="--"))
            if len(errs.false) <= 10:  # beyond, the dashed outlines say it; labels would hide the image
                ax.text(x1, y1, "false", fontsize=6, color="white", ha="right", va="top",
                        bbox={"facecolor": "black", "alpha": 0.8, "pad": 0.5, "lw": 0})
        for (_, _, x1, y1), true, _ in errs.confused:
            ax.text(x1, y1, f"is {name(true)}", fontsize=6, color="black", ha="right", va="top",
                    bbox={"facecolor": "yellow", "alpha": 0.85, "pad": 0.5, "lw": 0})
        ax.set_title(f"image {errs.image_id}: {len(errs.missed)} missed, {len(errs.false)} false, "
                     f"{len(errs.confused)} wrong class", fontsize=7)
    fig.tight_layout()
    fig.savefig(out_file, dpi=130)
    plt.close(fig)
    return Path(out_file)
