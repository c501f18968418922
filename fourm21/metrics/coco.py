"""Box and instance-mask AP with pycocotools' COCOeval, in the original image coordinates.

Predictions come in the original image's pixels (the evaluator's caller un-letterboxes them),
category ids are mapped back to the data set's own ids, masks encoded as RLE.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def predictions_to_coco(pred: dict[str, torch.Tensor], image_id: int, cat_ids: list[int]) -> list[dict]:
    """One image's decoded predictions (original pixels) -> COCO results entries (bbox, score, and
    segmentation if masks)."""
    if "boxes" not in pred or len(pred["boxes"]) == 0:
        return []
    boxes = pred["boxes"].cpu().numpy()
    scores = pred["scores"].float().cpu().numpy()
    labels = pred["labels"].cpu().numpy()
    rles = None
    if "masks" in pred:
        binary = pred["masks"].cpu().numpy().astype(np.uint8)
        rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
    results = []
    for i in range(len(scores)):
        x0, y0, x1, y1 = boxes[i].tolist()
        entry = {"image_id": image_id, "category_id": cat_ids[int(labels[i])],
                 "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(scores[i])}
        if rles is not None:
            rle = rles[i]
            entry["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        results.append(entry)
    return results


# The 12 numbers COCOeval.summarize() prints, in its order.
STAT_NAMES = ("map", "map50", "map75", "map_small", "map_medium", "map_large",
              "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large")


def results_for(results: list[dict], iou_type: str) -> list[dict]:
    """The entries of one COCO results file: 'bbox' drops masks; 'segm' drops boxes so that loadRes takes
    each detection's area from its mask, as COCOeval's area ranges expect (detectron2 does the same)."""
    if iou_type == "segm":
        return [{k: v for k, v in r.items() if k != "bbox"} for r in results if "segmentation" in r]
    return [{k: v for k, v in r.items() if k != "segmentation"} for r in results]


def coco_evaluate(coco_gt: COCO, results: list[dict], image_ids: list[int], iou_type: str
                  ) -> tuple[dict[str, float], COCOeval | None]:
    """COCOeval's 12 stats (``STAT_NAMES``) for ``iou_type`` 'bbox' or 'segm', and the COCOeval object.

    ``results`` are COCO results entries (as written to bbox.json / segm.json); stats where COCOeval
    has no ground truth (it writes -1) are reported as 0.
    """
    results = results_for(results, iou_type)
    if not results:
        return {k: 0.0 for k in STAT_NAMES}, None
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes([dict(r) for r in results])
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.params.imgIds = sorted(set(image_ids))
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: max(float(v), 0.0) for k, v in zip(STAT_NAMES, ev.stats)}, ev
