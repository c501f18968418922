"""The one drawing of predictions, with OpenCV: PNG overlays, video frames, the service's overlay and the
report's prediction grids all go through ``draw_frame``, so no two pictures of a prediction can drift apart.

OpenCV needs no GUI backend (matplotlib's global one is left to the user) and draws a frame ~40x faster.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import torch
import torch.nn.functional as F

PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
                    [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128],
                    [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0], [170, 255, 195]]) / 255.0

RGB = tuple[int, int, int]
RED: RGB = (255, 0, 0)
BLACK: RGB = (0, 0, 0)
YELLOW: RGB = (255, 255, 0)
WHITE: RGB = (255, 255, 255)
GRID_CELL = 320  # px: a grid panel's long side, where the text of draw_frame (scale 0.4) reads well
TITLE_H = 20  # px: the strip above a grid panel holding its title


def image_to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) pixels as the network takes them (uint8, or float 0-255: ``INPUT_CONTRACT``) -> (H, W, 3) uint8
    RGB, the input ``draw_frame`` takes."""
    if image.dtype == torch.uint8:
        return np.ascontiguousarray(image.cpu().permute(1, 2, 0).numpy())
    pixels = image.cpu().float().clamp(0, 255).round().to(torch.uint8)
    return np.ascontiguousarray(pixels.permute(1, 2, 0).numpy())


def tint_masks(image: np.ndarray, pred: Mapping[str, torch.Tensor], score_thr: float, semantic: bool
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


def _text(canvas: np.ndarray, text: str, org: tuple[int, int], colour: RGB, scale: float,
          text_colour: RGB = WHITE, right: bool = False) -> None:
    """Label on a filled box whose top-left (``right``: top-right) corner is ``org``, kept inside the frame."""
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x = org[0] - tw - 2 if right else org[0]
    x = int(min(max(x, 0), max(canvas.shape[1] - tw - 2, 0)))
    y = int(min(max(org[1], 0), max(canvas.shape[0] - th - base - 2, 0)))
    cv2.rectangle(canvas, (x, y), (x + tw + 2, y + th + base + 2), colour, thickness=-1)
    cv2.putText(canvas, text, (x + 1, y + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, text_colour, 1, cv2.LINE_AA)


def _colour(k: int) -> RGB:
    r, g, b = (int(c) for c in (PALETTE[k % len(PALETTE)] * 255).round())
    return r, g, b


def _text_scale(canvas: np.ndarray) -> float:
    """Text grows with frames over 640 px so it stays about as legible as on a small one."""
    return 0.4 * max(1.0, max(canvas.shape[:2]) / 640)


def draw_frame(image: np.ndarray, pred: Mapping[str, torch.Tensor], class_names: Sequence[str],
               image_class_names: Sequence[str], score_thr: float = 0.3, semantic: bool = False,
               caption_lines: Sequence[str] = (), min_side: int = 320,
               trails: Mapping[int, Sequence[tuple[float, float]]] | None = None,
               show_scores: bool = True, settings: Any = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB image + its predictions (original pixels) -> annotated uint8 RGB frame.

    Masks (and optionally the semantic map) are tinted, boxes outlined and labelled with class and
    score (without ``show_scores``, e.g. for ground truth: the class alone), the top-5 image classes and
    ``caption_lines`` written top left. Frames smaller than ``min_side`` are enlarged first so the text
    stays readable. Tracked detections (``pred["track_ids"]``) are coloured by track, labelled ``#id`` and
    drawn with their ``trails`` ({id: [(x, y) centres]}). With ``settings`` (the ``DecodeSettings`` the
    predictions were decoded with) each task draws its own part too (``Task.draw``: skeletons ...).
    """
    ids = pred.get("track_ids")
    # a tracked object keeps one colour: tint by track id, which tint_masks reads where it reads the class
    tinted = {**pred, "labels": ids} if ids is not None else pred
    shown, keep = tint_masks(image.astype(np.float32) / 255.0, tinted, score_thr, semantic)
    canvas = np.ascontiguousarray((shown * 255).round().astype(np.uint8))
    zoom = max(1.0, min_side / max(canvas.shape[:2]))
    if zoom > 1:
        canvas = cv2.resize(canvas, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
    scale = _text_scale(canvas)
    thickness = max(1, int(round(zoom)))
    if "boxes" in pred and len(pred["boxes"]):
        boxes = (pred["boxes"].cpu()[keep] * zoom).round().int().tolist()
        tracks = ids.cpu()[keep].tolist() if ids is not None else [None] * len(boxes)
        for (x0, y0, x1, y1), label, score, track in zip(boxes, pred["labels"].cpu()[keep].tolist(),
                                                         pred["scores"].cpu()[keep].tolist(), tracks):
            colour = _colour(label if track is None else track)
            if track is not None and trails and len(trails.get(track, ())) > 1:
                points = (np.asarray(trails[track], dtype=np.float32) * zoom).round().astype(np.int32)
                cv2.polylines(canvas, [points[:, None]], False, colour, thickness, cv2.LINE_AA)
            cv2.rectangle(canvas, (x0, y0), (x1, y1), colour, thickness=thickness)
            text = class_names[label] if label < len(class_names) else str(label)
            if show_scores:
                text += f" {score:.2f}"
            if track is not None:
                text = f"#{track} {text}"
            _text(canvas, text, (x0, y0 - int(20 * scale)), colour, scale)
    if settings is not None and "boxes" in pred:
        shown_ids = (ids.cpu() if ids is not None else pred["labels"].cpu())[keep].tolist()
        colours = [_colour(int(k)) for k in shown_ids]
        for name, task in settings.tasks.items():
            task.draw(canvas, pred, keep, zoom, colours, settings.of(name))
    lines = list(caption_lines)
    if "class_topk" in pred:
        def label(k: int) -> str:
            return image_class_names[k] if k < len(image_class_names) else str(k)
        lines.insert(0, ", ".join(f"{label(int(k))} {float(p):.2f}"
                                  for k, p in zip(pred["class_topk"], pred["class_topk_probs"])))
    step = int(26 * scale) + 4
    for i, line in enumerate(lines):
        _text(canvas, line, (2, 2 + i * step), BLACK, scale)
    return canvas


def write_png(canvas: np.ndarray, out_file: str | Path) -> Path:
    """An (H, W, 3) uint8 RGB picture as a PNG (OpenCV writes BGR); an OSError when it cannot be written."""
    if not cv2.imwrite(str(out_file), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR)):
        raise OSError(f"OpenCV could not write {out_file}")
    return Path(out_file)


def save_overlay(image: np.ndarray, pred: Mapping[str, torch.Tensor], class_names: Sequence[str],
                 image_class_names: Sequence[str], out_file: str | Path, score_thr: float = 0.3,
                 semantic: bool = False, caption_lines: Sequence[str] = (), settings: Any = None) -> Path:
    """One image's predictions (uint8 RGB input, original pixels) drawn by ``draw_frame`` as a PNG: at the
    image's size, images under 320 px on the long side enlarged to it so their labels stay readable."""
    return write_png(draw_frame(image, pred, class_names, image_class_names, score_thr, semantic, caption_lines,
                                settings=settings), out_file)


def _fit(image: np.ndarray, pred: Mapping[str, torch.Tensor], side: int
         ) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    """Image and prediction shrunk to ``side`` px on the long side (unchanged when smaller), so a grid panel's
    labels are drawn at the panel's size rather than shrunk with a large image."""
    h, w = image.shape[:2]
    if max(h, w) <= side:
        return image, dict(pred)
    s = side / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    out = dict(pred)
    if "boxes" in pred:
        out["boxes"] = pred["boxes"].float() * s
    if "keypoints" in pred:  # [x, y, visibility]: the points scale
        out["keypoints"] = pred["keypoints"].float() * pred["keypoints"].new_tensor([s, s, 1.0]).float()
    if "masks" in pred and len(pred["masks"]):
        out["masks"] = F.interpolate(pred["masks"][None].float(), size=(nh, nw), mode="nearest")[0] > 0.5
    elif "masks" in pred:
        out["masks"] = torch.zeros(0, nh, nw, dtype=torch.bool)
    if "semantic" in pred:
        out["semantic"] = F.interpolate(pred["semantic"][None, None].float(), size=(nh, nw),
                                        mode="nearest")[0, 0].long()
    return cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA), out


def _dashed_rect(canvas: np.ndarray, box: Sequence[float], colour: RGB, thickness: int, dash: int = 6) -> None:
    """An outline drawn in dashes (OpenCV has none): errors, told apart from the solid prediction boxes."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    for (ax, ay), (bx, by) in (((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)), ((x1, y1), (x0, y1)), ((x0, y1), (x0, y0))):
        length = max(abs(bx - ax), abs(by - ay))
        for start in range(0, max(length, 1), 2 * dash):
            end = min(start + dash, length)
            p = (ax + (bx - ax) * start // max(length, 1), ay + (by - ay) * start // max(length, 1))
            q = (ax + (bx - ax) * end // max(length, 1), ay + (by - ay) * end // max(length, 1))
            cv2.line(canvas, p, q, colour, thickness)


def _grid(panels: Sequence[tuple[np.ndarray, str]], cell: int = GRID_CELL, cols: int = 4) -> np.ndarray:
    """Pictures with a title above each, up to ``cols`` a row, each in a ``cell`` px square, on white."""
    n = max(len(panels), 1)
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    pad = 6
    ch, cw = TITLE_H + cell, cell
    sheet = np.full((rows * (ch + pad) + pad, cols * (cw + pad) + pad, 3), 255, dtype=np.uint8)
    for i, (picture, title) in enumerate(panels):
        r, c = divmod(i, cols)
        y, x = pad + r * (ch + pad), pad + c * (cw + pad)
        width = cv2.getTextSize(title, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)[0][0]
        scale = 0.4 * min(1.0, (cw - 2) / max(width, 1))  # a long title shrinks to its panel's width
        cv2.putText(sheet, title, (x + 1, y + TITLE_H - 6), cv2.FONT_HERSHEY_SIMPLEX, scale, BLACK, 1, cv2.LINE_AA)
        picture = picture[:cell, :cell]
        sheet[y + TITLE_H:y + TITLE_H + picture.shape[0], x:x + picture.shape[1]] = picture
    return sheet


def plot_prediction_grid(images: torch.Tensor, preds: Sequence[Mapping[str, torch.Tensor]],
                         class_names: Sequence[str], image_class_names: Sequence[str], out_file: str | Path,
                         score_thr: float = 0.4, settings: Any = None) -> Path:
    """Grid PNG of predictions (boxes, masks, image class as the panel title) on a batch of data-set images
    (uint8 or normalised), each panel drawn by ``draw_frame`` (with the tasks' own drawings: ``settings``)."""
    def title(pred: Mapping[str, torch.Tensor]) -> str:
        if "class_label" not in pred:
            return ""
        k = int(pred["class_label"])
        name = image_class_names[k] if k < len(image_class_names) else str(k)
        return f"{name} ({float(pred['class_probs'][k]):.2f})"

    panels = []
    for img, pred in zip(images, preds):
        image, fitted = _fit(image_to_uint8(img), pred, GRID_CELL)
        fitted = {k: v for k, v in fitted.items() if not k.startswith("class_topk")}  # the title holds the class
        panels.append((draw_frame(image, fitted, class_names, image_class_names, score_thr, min_side=GRID_CELL,
                                  settings=settings),
                       title(pred)))
    return write_png(_grid(panels), out_file)


class ImageErrorsLike(Protocol):
    """What ``plot_worst_images`` reads of ``fourm21.metrics.detection_errors.ImageErrors`` (boxes in
    original pixels, contiguous labels); a protocol, since drawing sits above the metrics it pictures."""

    image_id: int
    missed: list[tuple[list[float], int]]
    false: list[tuple[list[float], int]]
    confused: list[tuple[list[float], int, int]]


def plot_worst_images(panels: Sequence[tuple[np.ndarray, Mapping[str, torch.Tensor], ImageErrorsLike]],
                      class_names: Sequence[str], out_file: str | Path, score_thr: float = 0.25) -> Path:
    """Grid PNG of the images with the most errors: each (H, W, 3) uint8 image with its predictions (original
    pixels, at or above ``score_thr``) drawn by ``draw_frame``, missed objects outlined dashed red, false
    detections dashed black, wrong-class detections labelled with the true class."""
    def name(k: int) -> str:
        return class_names[k] if k < len(class_names) else str(k)

    drawn = []
    for image, pred, errs in panels:
        small, fitted = _fit(image, pred, GRID_CELL)
        canvas = draw_frame(small, fitted, class_names, (), score_thr, min_side=GRID_CELL)
        zoom = canvas.shape[1] / image.shape[1]  # original pixels -> canvas pixels
        scale = _text_scale(canvas)
        for (box, _), colour in [*((m, RED) for m in errs.missed), *((f, BLACK) for f in errs.false)]:
            _dashed_rect(canvas, [v * zoom for v in box], colour, 2)
        for box, true in errs.missed:  # labels after every outline, so no outline crosses one
            _text(canvas, f"missed {name(true)}", (int(box[0] * zoom), int(box[3] * zoom) + 1), RED, scale)
        for box, _ in errs.false if len(errs.false) <= 10 else ():  # beyond, labels would hide the image
            _text(canvas, "false", (int(box[2] * zoom), int(box[3] * zoom) + 1), BLACK, scale, right=True)
        for box, true, _ in errs.confused:
            _text(canvas, f"is {name(true)}", (int(box[2] * zoom), int(box[3] * zoom) + 1), YELLOW, scale,
                  text_colour=BLACK, right=True)
        drawn.append((canvas, f"image {errs.image_id}: {len(errs.missed)} missed, {len(errs.false)} false, "
                              f"{len(errs.confused)} wrong class"))
    return write_png(_grid(drawn), out_file)
