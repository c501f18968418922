"""The one converter from decoded predictions to what people and tools read: an image's JSON entry (predict,
serve), its per-object entries (predictions.json annotations) and COCO results (the evaluator's COCOeval,
bbox.json / segm.json). Each task writes its own part; ``meta`` carries the names (``class_names``,
``image_class_names``, ``cat_ids``, ``attribute_classes``, ``label_names``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fourm21.inference.decode import DecodeSettings
from fourm21.inference.letterbox import to_original_pixels
from fourm21.metrics.evaluator import MultiTaskEvaluator

Pred = dict[str, torch.Tensor]


def image_fields(pred: Pred, meta: Mapping[str, Any], s: DecodeSettings) -> dict[str, Any]:
    """The image-level fields every task adds to an image's entry (``classification``, ``attributes``, ``labels``)."""
    out: dict[str, Any] = {}
    for task in s.tasks.values():
        out.update(task.image_entry(pred, meta))
    return out


def object_entries(pred: Pred, meta: Mapping[str, Any], s: DecodeSettings, masks: bool = True,
                   digits: int | None = 5) -> list[dict[str, Any]]:
    """One entry per detected object: bbox [x0, y0, x1, y1] in the prediction's pixels, score (rounded to
    ``digits``; None = exact), category id and name, area, and (``masks``) the RLE ``segmentation``."""
    entries: list[dict[str, Any]] = []
    for task in s.tasks.values():
        entries = task.annotations(pred, entries, meta, masks, digits)
    return entries


def coco_entries(pred: Pred, image_id: int, meta: Mapping[str, Any], s: DecodeSettings, masks: bool = True,
                 digits: int | None = 5) -> list[dict[str, Any]]:
    """COCO results entries of one image (bbox [x, y, w, h], ``image_id``, ``iscrowd`` 0, ``id`` 0 to be
    numbered by the caller)."""
    out = []
    for e in object_entries(pred, meta, s, masks, digits):
        x0, y0, x1, y1 = e.pop("bbox")
        out.append({"id": 0, "image_id": image_id, "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": 0, **e})
    return out


def caption_lines(pred: Pred, meta: Mapping[str, Any], s: DecodeSettings) -> list[str]:
    """The lines drawn in the top left of an overlay (attributes, multi-labels ...)."""
    return [line for task in s.tasks.values() for line in task.caption_lines(pred, meta)]


def image_json(pred: Pred, meta: Mapping[str, Any], s: DecodeSettings, image_id: int, file_name: str | None,
               size: tuple[int, int]) -> dict[str, Any]:
    """An image's entry of ``predictions.json``: id, file name, height, width and the tasks' image-level fields."""
    return {"id": image_id, "file_name": file_name, "height": size[0], "width": size[1],
            **image_fields(pred, meta, s)}


class CocoResults:
    """What the evaluator calls per val image: the prediction on the network input mapped back to the image's
    original pixels, as exact-score COCO results with the data set's category ids."""

    def __init__(self, s: DecodeSettings, cat_ids: list[int]) -> None:
        # only the tasks COCOeval scores (and those they extend) are mapped back: a semantic map is not needed
        scored = {n: t for n, t in s.tasks.items() if t.coco_iou_type}
        self.settings = DecodeSettings(scored, {n: s.of(n) for n in scored})
        self.meta = {"cat_ids": list(cat_ids)}

    def __call__(self, pred: Pred, meta: Mapping[str, Any]) -> list[dict[str, Any]]:
        image_id = meta["image_id"]
        if not len(pred.get("boxes", ())):
            return []
        original = to_original_pixels(pred, dict(meta), self.settings)
        return coco_entries(original, image_id, self.meta, self.settings, masks=True, digits=None)


def build_evaluator(s: DecodeSettings, heads: Mapping[str, list[Any]], dataset: Any, tune: bool
                    ) -> MultiTaskEvaluator:
    """The evaluator of a val set: each head's metrics from its task (``heads[name]``: that head in every
    network scored or kept, the scored one first), COCOeval for the tasks with a COCO IoU type, and the
    tasks' main metrics for the selection score. ``tune``: tune what a task tunes on val (multi-label
    thresholds) while fitting; a report scores at the values the network holds."""
    parts = {name: task.metrics(name, heads[name], dataset, tune) for name, task in s.tasks.items()}
    params = {name: task.coco_params(s.of(name), dataset) for name, task in s.tasks.items() if task.coco_iou_type}
    coco = {name: task.coco_iou_type for name, task in s.tasks.items() if params.get(name) is not None}
    main = {name: task.main_metric for name, task in s.tasks.items()
            if task.main_metric and (not task.coco_iou_type or name in coco)}
    return MultiTaskEvaluator(dataset, parts, coco, CocoResults(s, list(getattr(dataset, "cat_ids", []))), main,
                              {name: params[name] for name in coco})
