"""Fast OpenCV drawing of one image's predictions, for video frames (matplotlib takes ~40x longer a frame).

The colours and the mask tinting are those of the PNG overlays (``fourm21.metrics.plots``), so a
video frame and an overlay of the same image look alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np
import torch

from fourm21.metrics.plots import PALETTE, tint_masks


def _text(canvas: np.ndarray, text: str, org: tuple[int, int], colour: tuple[int, int, int], scale: float) -> None:
    """Label on a filled box whose top-left corner is ``org`` (kept inside the frame)."""
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x = int(min(max(org[0], 0), max(canvas.shape[1] - tw - 2, 0)))
    y = int(min(max(org[1], 0), max(canvas.shape[0] - th - base - 2, 0)))
    cv2.rectangle(canvas, (x, y), (x + tw + 2, y + th + base + 2), colour, thickness=-1)
    cv2.putText(canvas, text, (x + 1, y + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


def _colour(k: int) -> tuple[int, int, int]:
    return tuple(int(c) for c in (PALETTE[k % len(PALETTE)] * 255).round())


def draw_frame(image: np.ndarray, pred: dict[str, torch.Tensor], class_names: Sequence[str],
               image_class_names: Sequence[str], score_thr: float = 0.3, semantic: bool = False,
               caption_lines: Sequence[str] = (), min_side: int = 320,
               trails: Mapping[int, Sequence[tuple[float, float]]] | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB image + its predictions (original pixels) -> annotated uint8 RGB frame.

    Masks (and optionally the semantic map) are tinted, boxes outlined and labelled with class and
    score, the top-5 image classes and ``caption_lines`` written top left. Frames smaller than
    ``min_side`` are enlarged first so the text stays readable. Tracked detections (``pred["track_ids"]``)
    are coloured by track, labelled ``#id`` and drawn with their ``trails`` ({id: [(x, y) centres]}).
    """
    ids = pred.get("track_ids")
    # a tracked object keeps one colour: tint by track id, which tint_masks reads where it reads the class
    tinted = {**pred, "labels": ids} if ids is not None else pred
    shown, keep = tint_masks(image.astype(np.float32) / 255.0, tinted, score_thr, semantic)
    canvas = np.ascontiguousarray((shown * 255).round().astype(np.uint8))
    zoom = max(1.0, min_side / max(canvas.shape[:2]))
    if zoom > 1:
        canvas = cv2.resize(canvas, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
    scale = 0.4 * max(1.0, max(canvas.shape[:2]) / 640)
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
            name = class_names[label] if label < len(class_names) else str(label)
            text = f"{name} {score:.2f}" if track is None else f"#{track} {name} {score:.2f}"
            _text(canvas, text, (x0, y0 - int(20 * scale)), colour, scale)
    lines = list(caption_lines)
    if "class_topk" in pred:
        def label(k: int) -> str:
            return image_class_names[k] if k < len(image_class_names) else str(k)
        lines.insert(0, ", ".join(f"{label(int(k))} {float(p):.2f}"
                                  for k, p in zip(pred["class_topk"], pred["class_topk_probs"])))
    step = int(26 * scale) + 4
    for i, line in enumerate(lines):
        _text(canvas, line, (2, 2 + i * step), (0, 0, 0), scale)
    return canvas
