"""Box and instance-mask AP with pycocotools' COCOeval, in the original image coordinates.

Predictions are mapped back from the letterboxed network input (one ``scale`` per image),
category ids back to the data set's own ids, masks encoded as RLE.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch.nn import functional as F


def predictions_to_coco(pred: dict[str, torch.Tensor], meta: dict, cat_ids: list[int],
                        mask_thr: float = 0.5) -> list[dict]:
    """One image's decoded predictions -> COCO results entries (bbox, score, and segmentation if masks)."""
    if "boxes" not in pred or len(pred["boxes"]) == 0:
        return []
    h, w = meta["orig_size"]
    scale = float(meta.get("scale", 1.0))
    boxes = (pred["boxes"].float().cpu() / scale).numpy()
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
    scores = pred["scores"].float().cpu().numpy()
    labels = pred["labels"].cpu().numpy()
    rles = None
    if "mask_probs" in pred:
        probs = pred["mask_probs"].float()
        vh, vw = round(h * scale), round(w * scale)  # the part of the letterboxed input that is image
        probs = probs[:, :vh, :vw]
        if (vh, vw) != (h, w):
            probs = F.interpolate(probs[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        binary = (probs > mask_thr).cpu().numpy().astype(np.uint8)
        rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
    results = []
    for i in range(len(scores)):
        x0, y0, x1, y1 = boxes[i].tolist()
        entry = {"image_id": meta["image_id"], "category_id": cat_ids[int(labels[i])],
                 "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(scores[i])}
        if rles is not None:
            rle = rles[i]
            entry["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        results.append(entry)
    return results


def coco_evaluate(coco_gt: COCO, results: list[dict], image_ids: list[int], iou_type: str) -> dict[str, float]:
    """AP@[.5:.95] (``map``), AP@.5 (``map50``), AP@.75 (``map75``) for ``iou_type`` 'bbox' or 'segm'."""
    if iou_type == "segm":
        # Without 'bbox', loadRes takes area from the mask, as COCOeval's area ranges expect (as detectron2 does).
        results = [{k: v for k, v in r.items() if k != "bbox"} for r in results if "segmentation" in r]
    else:
        results = [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
    if not results:
        return {"map": 0.0, "map50": 0.0, "map75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.params.imgIds = sorted(set(image_ids))
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [max(float(s), 0.0) for s in ev.stats[:3]]  # COCOeval writes -1 where no ground truth exists
    return {"map": stats[0], "map50": stats[1], "map75": stats[2]}
