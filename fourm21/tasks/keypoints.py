"""Keypoints (pose) on top of the detection task: the ``KeypointHead``'s points at each kept detection's
location, an OKS loss that scales with the object plus visibility BCE on the detection assignment, keypoint
AP by pycocotools' ``COCOeval(iouType="keypoints")`` with the head's sigmas, the COCO keypoint results of each
detection and the skeleton drawn on overlays."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np
import torch
from omegaconf import open_dict
from torch.nn import functional as F

from fourm21.errors import ConfigError, check_number
from fourm21.models.heads.keypoints import KeypointHead
from fourm21.tasks.base import Losses, Outputs, Pred, Task, pseudo_threshold
from fourm21.tasks.detection import DetectionTask
from fourm21.tasks.registry import register

# COCO's per-keypoint OKS sigmas of its 17 person keypoints (nose, eyes, ears, shoulders, elbows, wrists, hips,
# knees, ankles): the default of a 17-keypoint set, as pycocotools' COCOeval uses them.
COCO_PERSON_SIGMAS = (0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107,
                      0.087, 0.087, 0.089, 0.089)


def keypoint_loss(kpt_xy: torch.Tensor, kpt_logits: torch.Tensor, matched: torch.Tensor, gt_keypoints: torch.Tensor,
                  gt_boxes: torch.Tensor, valid: torch.Tensor, sigmas: torch.Tensor) -> dict[str, torch.Tensor]:
    """OKS loss, size-normalised L1 and visibility BCE over the positive locations (``matched`` >= 0, the
    detection assignment) of the samples that carry keypoints (``valid``).

    The OKS term is 1 - exp(-d^2 / (2 (2 sigma)^2 area)) per labelled keypoint, COCO's similarity with the box
    area as the object scale, so a pixel counts less on a big object; the L1 term (|dx| + |dy| over
    sqrt(area)) keeps a gradient where the OKS term saturates, far from the target early in training.
    """
    pos = (matched >= 0) & valid[:, None]
    if not pos.any():
        zero = kpt_xy.sum() * 0.0 + kpt_logits.sum() * 0.0  # keeps the graph whole (DDP: every parameter used)
        return {"oks": zero, "l1": zero, "vis": zero}
    bi, li = pos.nonzero(as_tuple=True)
    g = matched[bi, li]
    gt = gt_keypoints[bi, g].float()  # (P, K, 3)
    box = gt_boxes[bi, g].float()
    area = ((box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])).clamp(min=1.0)
    pred = kpt_xy[bi, li].float()
    labelled = gt[..., 2] > 0
    diff = pred - gt[..., :2]
    n = labelled.sum().clamp(min=1)
    e = diff.pow(2).sum(-1) / (2 * (2 * sigmas) ** 2 * area[:, None])
    oks = ((1 - torch.exp(-e)) * labelled).sum() / n
    l1 = (diff.abs().sum(-1) / area.sqrt()[:, None] * labelled).sum() / n
    vis = F.binary_cross_entropy_with_logits(kpt_logits[bi, li].float(), labelled.float())
    return {"oks": oks, "l1": l1, "vis": vis}


def sigmas_for(num_keypoints: int, default_sigma: float) -> list[float]:
    """The OKS sigmas of a keypoint set that names none: COCO's person sigmas for 17 keypoints, else one value."""
    if num_keypoints == len(COCO_PERSON_SIGMAS):
        return list(COCO_PERSON_SIGMAS)
    return [float(default_sigma)] * num_keypoints


@register
class KeypointTask(Task):
    kind = "kpt"
    head = KeypointHead
    requires = (DetectionTask.kind,)
    main_metric = "map"
    coco_iou_type = "keypoints"
    data_keys = {"num_keypoints": "num_keypoints"}
    pipeline_tag, pipeline_rank = "keypoint-detection", 2
    decoded_keys = ("det_keypoints",)
    flat_keys = decoded_keys
    detection_keys = ("keypoints",)

    def settings(self, head: Any) -> dict[str, Any]:
        return {"kpt_thr": float(head.kpt_thr), "sigmas": [float(s) for s in head.sigmas],
                "keypoint_names": [str(n) for n in head.keypoint_names],
                "skeleton": [[int(a), int(b)] for a, b in head.skeleton]}

    # --- training ---------------------------------------------------------------------------------------
    def loss(self, name: str, head: Any, outputs: Outputs, batch: dict[str, Any], cache: dict[str, Any]) -> Losses:
        valid = batch.get("has_keypoints")
        if valid is None or "det_matched" not in cache or not (valid & batch["has_boxes"]).any():
            return {}
        raw = outputs[name]
        parts = keypoint_loss(raw["kpt_xy"], raw["kpt_logits"], cache["det_matched"], batch["gt_keypoints"],
                              batch["gt_boxes"], valid & batch["has_boxes"],
                              raw["kpt_xy"].new_tensor(head.sigmas, dtype=torch.float32))
        return {"oks": parts["oks"], "l1": head.l1_weight * parts["l1"], "vis": head.vis_weight * parts["vis"]}

    def pseudo_targets(self, name: str, outputs: Outputs, preds: list[Pred], batch: dict[str, Any],
                       threshold: float | None, stats: dict[str, float], cache: dict[str, Any]) -> None:
        """The keypoints of the boxes the detection task kept; a point is labelled where the teacher finds it
        visible (probability >= ``semi.thresholds.<name>``)."""
        thr = pseudo_threshold(threshold, name)
        keep = cache.get("det_keep")
        if keep is None or not preds or "keypoints" not in preds[0]:
            return
        b, m = batch["gt_boxes"].shape[:2]
        k = preds[0]["keypoints"].shape[1]
        gt = batch["gt_boxes"].new_zeros((b, m, k, 3))
        for i, (p, kept) in enumerate(zip(preds, keep)):
            pts = p["keypoints"][kept]
            gt[i, : len(pts), :, :2] = pts[..., :2]
            gt[i, : len(pts), :, 2] = 2.0 * (pts[..., 2] >= thr)
        batch.update(gt_keypoints=gt, has_keypoints=torch.ones(b, dtype=torch.bool, device=gt.device))

    # --- decoding ---------------------------------------------------------------------------------------
    def decode(self, name: str, outputs: Outputs, decoded: dict[str, torch.Tensor], image_size: tuple[int, int],
               settings: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        if "det_batch_index" not in decoded:
            return {}
        raw = outputs[name]
        bi, loc = decoded["det_batch_index"], decoded["det_locations"]
        xy = raw["kpt_xy"][bi, loc].float()
        score = raw["kpt_logits"][bi, loc].float().sigmoid()
        return {"det_keypoints": torch.cat([xy, score[..., None]], -1)}

    def split(self, decoded: Mapping[str, torch.Tensor], preds: list[Pred], image_size: tuple[int, int],
              settings: Mapping[str, Any], shared: dict[str, Any]) -> None:
        """keypoints (N, K, 3) [x, y, visibility probability] of each image's kept detections."""
        if "det_keypoints" not in decoded or "det_rows" not in shared:
            return
        for p, sel in zip(preds, shared["det_rows"]):
            p["keypoints"] = decoded["det_keypoints"][sel].float()

    def to_original(self, pred: Pred, out: Pred, orig_size: tuple[int, int], scale: float,
                    settings: Mapping[str, Any]) -> None:
        if "keypoints" in pred:
            h, w = orig_size
            k = pred["keypoints"].float().clone()
            k[..., 0] = (k[..., 0] / scale).clamp(0, w)
            k[..., 1] = (k[..., 1] / scale).clamp(0, h)
            out["keypoints"] = k

    # --- evaluation -------------------------------------------------------------------------------------
    def coco_params(self, settings: Mapping[str, Any], dataset: Any) -> dict[str, Any] | None:
        """COCOeval's keypoint sigmas (the head's, as the loss uses them); None when the set has no keypoints."""
        if not getattr(dataset, "keypoint_names", None):
            return None
        return {"kpt_oks_sigmas": np.asarray(settings["sigmas"], dtype=np.float64)}

    # --- output -----------------------------------------------------------------------------------------
    def annotations(self, pred: Pred, entries: list[dict[str, Any]], meta: Mapping[str, Any], masks: bool,
                    digits: int | None) -> list[dict[str, Any]]:
        """Each detection's ``keypoints`` as COCO keypoint results: [x, y, visibility probability] * K."""
        kpts = pred.get("keypoints")
        if kpts is None or len(kpts) != len(entries):
            return entries
        for e, k in zip(entries, kpts.float().tolist()):
            e["keypoints"] = [v for x, y, s in k for v in (x, y, round(s, digits) if digits is not None else s)]
        return entries

    def draw(self, canvas: np.ndarray, pred: Pred, keep: torch.Tensor, zoom: float,
             colours: list[tuple[int, int, int]], settings: Mapping[str, Any]) -> None:
        """The skeleton of each shown detection in its colour, and its keypoints visible at ``kpt_thr``."""
        if "keypoints" not in pred or not len(pred["keypoints"]):
            return
        thr, thickness = float(settings["kpt_thr"]), max(1, int(round(zoom)))
        radius = max(2, int(round(1.5 * zoom)))
        for k, colour in zip(pred["keypoints"].cpu()[keep].float().numpy(), colours):
            xy = (k[:, :2] * zoom).round().astype(np.int32)
            seen = k[:, 2] >= thr
            for a, b in settings["skeleton"]:
                if 0 < a <= len(k) and 0 < b <= len(k) and seen[a - 1] and seen[b - 1]:
                    cv2.line(canvas, tuple(xy[a - 1].tolist()), tuple(xy[b - 1].tolist()), colour, thickness,
                             cv2.LINE_AA)
            for point in xy[seen]:
                cv2.circle(canvas, tuple(point.tolist()), radius, colour, -1, cv2.LINE_AA)
                cv2.circle(canvas, tuple(point.tolist()), radius, (255, 255, 255), 1, cv2.LINE_AA)

    # --- config and data --------------------------------------------------------------------------------
    def fill_from_data(self, cfg: Any, name: str, datamodule: Any) -> None:
        """``data.num_keypoints`` and the head's ``keypoint_names`` / ``skeleton`` / ``sigmas`` left null: the
        training sets' keypoint set (COCO's person sigmas for 17 keypoints, else ``default_sigma``)."""
        head = cfg.model.heads[name]
        if cfg.data.get("num_keypoints", 0) is not None and all(
                head.get(k) is not None for k in ("keypoint_names", "skeleton", "sigmas")):
            return
        datamodule.setup("fit")
        ds = next((d for d in datamodule.train_sets.values() if getattr(d, "keypoint_names", None)), None)
        if ds is None:
            raise ConfigError(f"model.heads.{name}: no training data set has keypoints (a COCO file whose categories "
                              f"name 'keypoints', or YOLO-pose labels); disable the head "
                              f"(model.heads.{name}.enabled=false) or pick data with keypoints "
                              f"(e.g. experiment=shapes_pose)")
        names = list(ds.keypoint_names)
        with open_dict(cfg):
            if cfg.data.get("num_keypoints", 0) is None:
                cfg.data.num_keypoints = len(names)
            if head.get("keypoint_names") is None:
                head.keypoint_names = names
            if head.get("skeleton") is None:
                head.skeleton = [list(e) for e in ds.skeleton]
            if head.get("sigmas") is None:
                head.sigmas = sigmas_for(len(names), head.default_sigma)
        if len(names) != head.num_keypoints:
            raise ConfigError(f"model.heads.{name}.num_keypoints is {head.num_keypoints} but the training data has "
                              f"{len(names)} keypoints ({', '.join(names)})")

    def check_config(self, cfg: Any, name: str, head_cfg: Any) -> None:
        super().check_config(cfg, name, head_cfg)
        k = head_cfg.get("num_keypoints")
        if "kpt_thr" in head_cfg:
            check_number(head_cfg.kpt_thr, f"model.heads.{name}.kpt_thr", 0, 1)
        for key in ("l1_weight", "vis_weight", "default_sigma"):
            if key in head_cfg:
                check_number(head_cfg[key], f"model.heads.{name}.{key}", 0)
        for key in ("sigmas", "keypoint_names"):
            values = head_cfg.get(key)
            if values is not None and isinstance(k, int) and len(values) != k:
                raise ConfigError(f"model.heads.{name}.{key} has {len(values)} entries for {k} keypoints")
        for i, s in enumerate(head_cfg.get("sigmas") or []):
            check_number(s, f"model.heads.{name}.sigmas[{i}]", 0, low_open=True)
        for edge in head_cfg.get("skeleton") or []:
            if len(edge) != 2 or not all(isinstance(v, int) and (not isinstance(k, int) or 1 <= v <= k) for v in edge):
                raise ConfigError(f"model.heads.{name}.skeleton: {list(edge)} is not a pair of 1-based keypoint "
                                  f"indices (COCO's convention) up to {k}")
