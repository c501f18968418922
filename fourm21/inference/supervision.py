"""One image's predictions as roboflow ``supervision`` objects, so its annotators, zones and dataset tools take a
fourm21 model's output as they take RF-DETR's: ``sv.Detections`` (boxes, masks, classes, scores, track ids; class
names and keypoints in ``data``; the image-level JSON fields in ``metadata``) and ``sv.KeyPoints``.

``supervision`` is optional (``pip install "fourm21[supervision]"``) and imported on first use only: importing
fourm21 never imports it.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fourm21.inference.decode import DecodeSettings
from fourm21.inference.results import image_fields

if TYPE_CHECKING:
    import supervision as sv

INSTALL = 'pip install "fourm21[supervision]"'


def _supervision() -> Any:
    """The ``supervision`` module, or a one-line ImportError saying how to install it."""
    try:
        import supervision
    except ImportError:
        raise ImportError(f"converting predictions to supervision needs the 'supervision' package: {INSTALL}") from None
    return supervision


def _array(pred: Mapping[str, torch.Tensor], key: str, dtype: Any) -> np.ndarray | None:
    value = pred.get(key)
    return None if value is None else value.detach().cpu().numpy().astype(dtype, copy=False)


def _class_names(labels: np.ndarray, meta: Mapping[str, Any]) -> np.ndarray:
    """(N,) str: each label's name in ``meta['class_names']`` (the label itself where the model names none)."""
    names = list(meta.get("class_names") or [])
    return np.array([names[k] if 0 <= k < len(names) else str(k) for k in labels.tolist()], dtype=str)


def to_detections(pred: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None,
                  settings: DecodeSettings | None = None) -> sv.Detections:
    """One image's predictions (a ``Fourm21Model.predict`` dict, original pixels) -> ``sv.Detections``.

    ``xyxy`` (N, 4) float32, ``confidence`` (N,) float32, ``class_id`` (N,) int64 — the model's contiguous label,
    an index into ``meta['class_names']`` (predictions.json's ``category_id`` is ``cat_ids[label]``, or label + 1)
    —, ``mask`` (N, H, W) bool when the model has instance masks, ``tracker_id`` (N,) when tracked,
    ``data['class_name']`` (N,) str and ``data['keypoints']`` (N, K, 3) [x, y, visibility probability] when the
    model has keypoints. ``metadata`` holds the image-level fields of predictions.json (``classification`` ...)
    when ``settings`` (the model's) is given. A prediction without detections gives an empty ``sv.Detections``."""
    sv = _supervision()
    meta = meta or {}
    boxes = _array(pred, "boxes", np.float32)
    xyxy = boxes.reshape(-1, 4) if boxes is not None else np.zeros((0, 4), np.float32)
    n = len(xyxy)
    labels = _array(pred, "labels", np.int64)
    labels = labels if labels is not None else np.zeros(n, np.int64)
    scores = _array(pred, "scores", np.float32)
    data: dict[str, Any] = {"class_name": _class_names(labels, meta)}
    keypoints = _array(pred, "keypoints", np.float32)
    if keypoints is not None:
        data["keypoints"] = keypoints
    metadata = image_fields(dict(pred), meta, settings) if settings is not None else {}
    return sv.Detections(xyxy=xyxy, mask=_array(pred, "masks", bool),
                         confidence=scores if scores is not None else np.zeros(n, np.float32), class_id=labels,
                         tracker_id=_array(pred, "track_ids", np.int64), data=data, metadata=metadata)


def to_keypoints(pred: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None) -> sv.KeyPoints:
    """One image's keypoints -> ``sv.KeyPoints`` for supervision's vertex and edge annotators: ``xy`` (N, K, 2)
    float32 in original pixels, ``keypoint_confidence`` (N, K) (each point's visibility probability),
    ``detection_confidence`` (N,), ``class_id`` (N,), ``data['class_name']`` and, when tracked,
    ``data['tracker_id']``. supervision before 0.29 names the per-point array ``confidence`` and has no
    detection confidence: it is then passed as ``confidence`` and ``data['detection_confidence']``."""
    sv = _supervision()
    meta = meta or {}
    points = _array(pred, "keypoints", np.float32)
    if points is None:
        raise ValueError("this prediction has no keypoints: the model predicts none (it has no keypoint head)")
    labels = _array(pred, "labels", np.int64)
    scores = _array(pred, "scores", np.float32)
    data: dict[str, Any] = {"class_name": _class_names(labels, meta)}
    tracks = _array(pred, "track_ids", np.int64)
    if tracks is not None:
        data["tracker_id"] = tracks
    xy, confidence = np.ascontiguousarray(points[..., :2]), np.ascontiguousarray(points[..., 2])
    if "keypoint_confidence" in inspect.signature(sv.KeyPoints).parameters:
        return sv.KeyPoints(xy=xy, class_id=labels, keypoint_confidence=confidence, detection_confidence=scores,
                            data=data)
    data["detection_confidence"] = scores
    return sv.KeyPoints(xy=xy, class_id=labels, confidence=confidence, data=data)
