"""Box, instance-mask and keypoint AP with pycocotools' COCOeval, in the original image coordinates.

The results entries come from ``fourm21.inference.results`` (original pixels, the data set's category ids,
masks as RLE); this module scores them.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping
from typing import Any

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

# The 12 numbers COCOeval.summarize() prints, in its order.
STAT_NAMES = ("map", "map50", "map75", "map_small", "map_medium", "map_large",
              "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large")
# ... and the 10 it prints for keypoints (no small objects; 20 detections an image).
KEYPOINT_STAT_NAMES = ("map", "map50", "map75", "map_medium", "map_large",
                       "mar", "mar50", "mar75", "mar_medium", "mar_large")


def stat_names(iou_type: str) -> tuple[str, ...]:
    """The names of COCOeval's stats for ``iou_type``, in its order."""
    return KEYPOINT_STAT_NAMES if iou_type == "keypoints" else STAT_NAMES


def results_for(results: list[dict], iou_type: str) -> list[dict]:
    """The entries of one COCO results file: 'bbox' drops masks; 'segm' drops boxes so that loadRes takes
    each detection's area from its mask, as COCOeval's area ranges expect (detectron2 does the same);
    'keypoints' keeps the entries with keypoints, without masks."""
    if iou_type == "keypoints":
        return [{k: v for k, v in r.items() if k != "segmentation"} for r in results if "keypoints" in r]
    if iou_type == "segm":
        return [{k: v for k, v in r.items() if k != "bbox"} for r in results if "segmentation" in r]
    return [{k: v for k, v in r.items() if k != "segmentation"} for r in results]


def coco_evaluate(coco_gt: COCO, results: list[dict], image_ids: list[int], iou_type: str,
                  params: Mapping[str, Any] | None = None) -> tuple[dict[str, float], COCOeval | None]:
    """COCOeval's stats (``stat_names``) for ``iou_type`` 'bbox', 'segm' or 'keypoints', and the COCOeval object.

    ``results`` are COCO results entries (as written to bbox.json / segm.json / keypoints.json); ``params``:
    attributes of ``COCOeval.params`` to set (``kpt_oks_sigmas``); stats where COCOeval has no ground truth (it
    writes -1) are reported as 0.
    """
    results = results_for(results, iou_type)
    names = stat_names(iou_type)
    if not results:
        return {k: 0.0 for k in names}, None
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes([dict(r) for r in results])
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        for key, value in (params or {}).items():
            setattr(ev.params, key, value)
        ev.params.imgIds = sorted(set(image_ids))
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: max(float(v), 0.0) for k, v in zip(names, ev.stats)}, ev
