"""Where detection and instance-mask predictions go wrong: a confusion matrix with a background class,
per-class AP from COCOeval, and per-image error counts (to find the worst images).

Inputs are those COCOeval scores: the ground truth (a pycocotools ``COCO``) and the COCO results entries
per image, in original pixels (``MultiTaskEvaluator.coco_results``). A detection matches a ground-truth
object at ``IoU >= iou_thr`` (box IoU for ``bbox``, mask IoU for ``segm``); only detections with
``score >= score_thr`` take part. Crowd objects are no targets: a detection left on one is ignored, as
COCOeval ignores it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

BACKGROUND = "background"


@dataclass
class ImageErrors:
    """One image's matching outcome. Boxes are (x0, y0, x1, y1) original pixels, labels contiguous indices."""

    image_id: int
    num_gt: int = 0
    matched: list[int] = field(default_factory=list)  # labels of objects found with the right class
    confused: list[tuple[list[float], int, int]] = field(default_factory=list)  # (det box, true, predicted)
    missed: list[tuple[list[float], int]] = field(default_factory=list)  # (gt box, true label): no detection
    false: list[tuple[list[float], int]] = field(default_factory=list)  # (det box, predicted): on no object

    @property
    def errors(self) -> int:
        """Missed objects + false detections + detections of the wrong class."""
        return len(self.missed) + len(self.false) + len(self.confused)

    def summary(self) -> dict[str, int]:
        return {"image_id": int(self.image_id), "gt": self.num_gt, "matched": len(self.matched),
                "confused": len(self.confused), "missed": len(self.missed), "false": len(self.false)}


@dataclass
class DetectionErrors:
    """``matrix[i, j]``: objects of class ``i`` detected as class ``j``; the last row (background) counts
    false detections, the last column missed objects. ``class_names`` ends with ``"background"``."""

    matrix: np.ndarray  # (K + 1, K + 1) int64, rows true, columns predicted
    class_names: list[str]
    per_image: list[ImageErrors]
    iou_type: str
    iou_thr: float
    score_thr: float

    def to_json(self) -> dict[str, Any]:
        """The report.json form: the matrix as a nested list, with its class names and thresholds."""
        return {"classes": list(self.class_names), "matrix": self.matrix.astype(int).tolist(),
                "rows": "true", "columns": "predicted", "iou_type": self.iou_type,
                "iou_thr": float(self.iou_thr), "score_thr": float(self.score_thr)}


def _xyxy(bbox: list[float]) -> list[float]:
    x, y, w, h = bbox
    return [float(x), float(y), float(x + w), float(y + h)]


def _det_box(det: dict) -> list[float]:
    """A results entry's box (xyxy); a mask-only entry's from its mask."""
    bbox = det["bbox"] if "bbox" in det else mask_utils.toBbox(det["segmentation"]).tolist()
    return _xyxy(bbox)


def _gt_region(coco_gt: COCO, ann: dict, iou_type: str) -> Any:
    return coco_gt.annToRLE(ann) if iou_type == "segm" else ann["bbox"]


def _ious(dets: list, gts: list, crowd: bool) -> np.ndarray:
    """(D, G) IoU (pycocotools: for a crowd object, the overlap over the detection's area)."""
    if not dets or not gts:
        return np.zeros((len(dets), len(gts)))
    return np.asarray(mask_utils.iou(dets, gts, [int(crowd)] * len(gts))).reshape(len(dets), len(gts))


def match_image(coco_gt: COCO, image_id: int, results: list[dict], cat_index: dict[int, int], iou_type: str,
                iou_thr: float, score_thr: float) -> ImageErrors:
    """Greedy matching of one image's detections (by score, highest first) to its objects.

    First every detection looks for an unmatched object of its own class (the highest IoU at or above
    ``iou_thr``), as COCOeval matches; the detections left then look for an unmatched object of any class:
    those are the confusions. Detections still left are false unless they lie on a crowd region.
    """
    anns = [a for a in coco_gt.imgToAnns.get(image_id, []) if a["category_id"] in cat_index]
    gts = [a for a in anns if not a.get("iscrowd", 0)]
    crowds = [a for a in anns if a.get("iscrowd", 0)]
    key = "segmentation" if iou_type == "segm" else "bbox"
    dets = sorted((r for r in results if r["score"] >= score_thr and key in r and r["category_id"] in cat_index),
                  key=lambda r: -r["score"])  # sorted() is stable: equal scores keep their order
    out = ImageErrors(image_id, num_gt=len(gts))
    ious = _ious([d[key] for d in dets], [_gt_region(coco_gt, a, iou_type) for a in gts], crowd=False)
    gt_label = [cat_index[a["category_id"]] for a in gts]
    det_label = [cat_index[d["category_id"]] for d in dets]
    gt_match = [-1] * len(gts)
    det_match = [-1] * len(dets)
    for same_class in (True, False):
        for d in range(len(dets)):
            if det_match[d] >= 0:
                continue
            best, best_iou = -1, iou_thr
            for g in range(len(gts)):
                if gt_match[g] >= 0 or (same_class and gt_label[g] != det_label[d]):
                    continue
                if ious[d, g] >= best_iou:
                    best, best_iou = g, ious[d, g]
            if best >= 0:
                det_match[d], gt_match[best] = best, d
    left = [d for d in range(len(dets)) if det_match[d] < 0]
    on_crowd = _ious([dets[d][key] for d in left], [_gt_region(coco_gt, a, iou_type) for a in crowds], crowd=True)
    for k, d in enumerate(left):
        if not (on_crowd.shape[1] and on_crowd[k].max() >= iou_thr):
            out.false.append((_det_box(dets[d]), det_label[d]))
    for g, d in enumerate(gt_match):
        if d < 0:
            out.missed.append((_xyxy(gts[g]["bbox"]), gt_label[g]))
        elif det_label[d] == gt_label[g]:
            out.matched.append(gt_label[g])
        else:
            out.confused.append((_det_box(dets[d]), gt_label[g], det_label[d]))
    return out


def class_list(coco_gt: COCO, cat_ids: list[int] | None = None) -> tuple[list[int], list[str]]:
    """Category ids in contiguous-label order (``cat_ids``, else sorted as COCOeval orders them) and names."""
    ids = list(cat_ids) if cat_ids else sorted(coco_gt.cats)
    return ids, [str(coco_gt.cats[c].get("name", c)) for c in ids]


ERROR_IOU_TYPES = ("bbox", "segm")  # what ``detection_errors`` matches by


def detection_errors(coco_gt: COCO, results_by_image: dict[int, list[dict]], iou_type: str = "bbox",
                     iou_thr: float = 0.5, score_thr: float = 0.25, cat_ids: list[int] | None = None
                     ) -> DetectionErrors:
    """Confusion matrix (classes + background) and per-image errors over the images in ``results_by_image``
    (an image with no detections is a key with an empty list), for ``iou_type`` 'bbox' or 'segm'."""
    if iou_type not in ERROR_IOU_TYPES:
        raise ValueError(f"iou_type must be 'bbox' or 'segm', not {iou_type!r}")
    ids, names = class_list(coco_gt, cat_ids)
    index = {c: i for i, c in enumerate(ids)}
    k = len(ids)
    matrix = np.zeros((k + 1, k + 1), dtype=np.int64)
    per_image = []
    for image_id in results_by_image:
        errs = match_image(coco_gt, image_id, results_by_image[image_id], index, iou_type, iou_thr, score_thr)
        per_image.append(errs)
        for true in errs.matched:
            matrix[true, true] += 1
        for _, true, pred in errs.confused:
            matrix[true, pred] += 1
        for _, true in errs.missed:
            matrix[true, k] += 1
        for _, pred in errs.false:
            matrix[k, pred] += 1
    return DetectionErrors(matrix, [*names, BACKGROUND], per_image, iou_type, float(iou_thr), float(score_thr))


def worst_images(per_image: list[ImageErrors], n: int) -> list[ImageErrors]:
    """The ``n`` images with the most errors (ties: more missed objects first, then the lower image id);
    images without errors are never among them."""
    ranked = sorted((e for e in per_image if e.errors), key=lambda e: (-e.errors, -len(e.missed), e.image_id))
    return ranked[: max(int(n), 0)]


def per_class_ap(coco_eval: Any, coco_gt: COCO | None = None) -> dict[str, dict[str, float]]:
    """``{class name: {"ap", "ap50", "ap75", "instances"}}`` from an accumulated COCOeval: its precision
    array (T IoUs, R recalls, K classes, A areas, M max-detections) sliced per class, at area 'all' and
    the largest max-detections, as ``COCOeval.summarize`` averages it over classes. Classes without
    ground truth in the evaluated images (precision -1 throughout) are left out."""
    precision = coco_eval.eval["precision"]  # (T, R, K, A, M)
    params = coco_eval.params
    coco_gt = coco_gt if coco_gt is not None else coco_eval.cocoGt
    iou_thrs = np.asarray(params.iouThrs)
    image_ids = set(params.imgIds)
    out: dict[str, dict[str, float]] = {}
    for k, cat_id in enumerate(params.catIds):
        p = precision[:, :, k, 0, -1]  # (T, R)
        if not (p > -1).any():
            continue
        instances = sum(1 for a in coco_gt.loadAnns(coco_gt.getAnnIds(catIds=[cat_id]))
                        if a["image_id"] in image_ids and not a.get("iscrowd", 0))
        name = str(coco_gt.cats[cat_id].get("name", cat_id))
        out[name] = {"ap": _mean_valid(p), "ap50": _mean_valid(p[np.isclose(iou_thrs, 0.5)]),
                     "ap75": _mean_valid(p[np.isclose(iou_thrs, 0.75)]), "instances": float(instances)}
    return out


def _mean_valid(values: np.ndarray) -> float:
    """Mean over the entries COCOeval filled (it writes -1 where there is nothing to score)."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else 0.0


def results_to_prediction(results: list[dict], cat_ids: list[int], masks: bool = False) -> dict[str, torch.Tensor]:
    """COCO results entries of one image -> the decoded-prediction dict the plots draw: ``boxes`` (N, 4)
    xyxy, ``labels`` (N,) contiguous, ``scores`` (N,), with ``masks`` (N, H, W) bool when asked and present."""
    index = {c: i for i, c in enumerate(cat_ids)}
    results = [r for r in results if r["category_id"] in index]
    pred = {"boxes": torch.tensor([_det_box(r) for r in results], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([index[r["category_id"]] for r in results], dtype=torch.int64),
            "scores": torch.tensor([float(r["score"]) for r in results], dtype=torch.float32)}
    if masks and results and all("segmentation" in r for r in results):
        decoded = mask_utils.decode([r["segmentation"] for r in results])  # (H, W, N)
        pred["masks"] = torch.from_numpy(np.ascontiguousarray(decoded.transpose(2, 0, 1))).bool()
    return pred
