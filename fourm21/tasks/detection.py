"""Object detection (FCOS-style, anchor-free): the ``DetectionHead``, the assignment and focal / GIoU /
centerness losses, decoding with ``torchvision.ops.batched_nms``, COCO box AP, and the per-object entries of
the JSON and COCO results."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import open_dict
from torchvision.ops import batched_nms

from fourm21.errors import ConfigError, check_number
from fourm21.losses.detection import decode_ltrb, fcos_assign, fcos_loss, level_ranges
from fourm21.models.heads.detection import DetectionHead, make_points
from fourm21.tasks.base import Losses, Outputs, Pred, Task, pseudo_threshold
from fourm21.tasks.masks import cached_outside_trace, tracing
from fourm21.tasks.registry import register


def det_assign(head: DetectionHead, raw: Mapping[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
    """(B, L) matched ground-truth index per location of the detection head's ``raw`` output, -1 for background."""
    strides = raw["point_strides"]
    ranges = torch.tensor(level_ranges(head.strides, head.range_mult), device=strides.device)
    level = torch.bucketize(strides, torch.tensor(head.strides, device=strides.device, dtype=strides.dtype))
    return fcos_assign(raw["points"], ranges[level], strides, batch["gt_boxes"], batch["gt_labels"],
                       head.center_radius)


def detection_points(raw: Mapping[str, torch.Tensor], image_size: tuple[int, int],
                     strides: tuple[int, ...]) -> torch.Tensor:
    """The location centres of ``raw`` (an exported graph does not return them: they depend only on the
    input size)."""
    if "points" in raw:
        return raw["points"]
    return grid_points(tuple(image_size), tuple(strides), raw["cls_logits"].device)


@cached_outside_trace
def grid_points(image_size: tuple[int, int], strides: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``make_points`` of an input size."""
    shapes = [(-(-image_size[0] // s), -(-image_size[1] // s)) for s in strides]
    return make_points(shapes, list(strides), device)[0]


def decode_detections(raw: Mapping[str, torch.Tensor], image_size: tuple[int, int], s: Mapping[str, Any]
                      ) -> dict[str, torch.Tensor]:
    """Scores sqrt(class x centerness), the ``pre_nms_topk`` best per image, above ``score_thr``, per-class
    NMS within each image, at most ``max_det`` per image -> flat ``det_batch_index`` (K,), ``det_boxes``
    (K, 4) xyxy input pixels, ``det_scores``, ``det_labels``, ``det_locations`` (K,), sorted by score."""
    logits, ctr = raw["cls_logits"].float(), raw["centerness"].float()
    b, n_loc, n_cls = logits.shape
    k = min(int(s["pre_nms_topk"]), n_loc * n_cls)
    # Two top-k's instead of one over every (location, class) pair, with the same result: a pair among the k
    # best lies at one of the k locations whose best class scores highest (each location above it holds a
    # better pair). At 640 px that sorts 80k pairs instead of 670k.
    k_loc = min(k, n_loc)
    loc_i = (logits.amax(-1).sigmoid() * ctr.sigmoid()).topk(k_loc, dim=1).indices  # (B, k_loc)
    cand = torch.gather(logits, 1, loc_i[..., None].expand(b, k_loc, n_cls))
    scores = (cand.sigmoid() * torch.gather(ctr, 1, loc_i).sigmoid()[..., None]).sqrt()
    top_s, top_i = scores.reshape(b, k_loc * n_cls).topk(k, dim=1)  # (B, k)
    loc, lab = torch.gather(loc_i, 1, top_i // n_cls), top_i % n_cls
    points = detection_points(raw, image_size, s["strides"])
    ltrb = torch.gather(raw["box_ltrb"].float(), 1, loc[..., None].expand(b, k, 4))
    boxes = decode_ltrb(points[loc], ltrb)
    h, w = image_size
    boxes = torch.minimum(boxes.clamp(min=0), torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device))
    batch_idx = torch.arange(b, device=scores.device)[:, None].expand(b, k).reshape(-1)
    flat_boxes, flat_scores, flat_loc, flat_lab = boxes.reshape(-1, 4), top_s.reshape(-1), loc.reshape(-1), \
        lab.reshape(-1)
    # below the threshold first: NMS only lets a box suppress lower-scored ones, so the kept set is the same
    above = (flat_scores > s["score_thr"]).nonzero()[:, 0]
    keep = above[batched_nms(flat_boxes[above], flat_scores[above], batch_idx[above] * n_cls + flat_lab[above],
                             float(s["iou_thr"]))]
    # at most max_det per image: keep is sorted by score, so a running count per image ranks them
    if b == 1 and not tracing():  # an exported graph keeps the batch dimension dynamic
        keep = keep[: int(s["max_det"])]
    else:
        in_image = (batch_idx[keep][:, None] == torch.arange(b, device=scores.device)[None]).long()
        rank = (in_image.cumsum(0) * in_image).sum(1)
        keep = keep[rank <= int(s["max_det"])]
    return {"det_batch_index": batch_idx[keep], "det_boxes": flat_boxes[keep], "det_scores": flat_scores[keep],
            "det_labels": flat_lab[keep], "det_locations": flat_loc[keep]}


def _probability(key: str, value: Any, low_open: bool = False) -> float:
    check_number(value, key, 0, 1, low_open=low_open)
    return float(value)


@register
class DetectionTask(Task):
    kind = "det"
    head = DetectionHead
    main_metric = "map"
    coco_iou_type = "bbox"
    data_keys = {"num_classes": "num_classes"}
    pipeline_tag, pipeline_rank = "object-detection", 0
    overrides = {"score_thr": "score_thr", "iou_thr": "iou_thr", "max_det": "max_det"}
    decoded_keys = ("det_batch_index", "det_boxes", "det_scores", "det_labels")
    flat_keys = decoded_keys
    detection_keys = ("boxes", "scores", "labels", "locations")

    def settings(self, head: Any) -> dict[str, Any]:
        return {"strides": tuple(int(s) for s in head.strides), "score_thr": float(head.score_thr),
                "iou_thr": float(head.iou_thr), "max_det": int(head.max_det), "pre_nms_topk": int(head.pre_nms_topk)}

    def check_override(self, key: str, value: Any) -> Any:
        if key == "max_det":
            check_number(value, key, 1, integer=True)
            return int(value)
        return _probability(key, value, low_open=key == "iou_thr")

    def loss(self, name: str, head: Any, outputs: Outputs, batch: dict[str, Any], cache: dict[str, Any]) -> Losses:
        valid = batch["has_boxes"]
        if not valid.any():
            return {}
        raw = outputs[name]
        matched = det_assign(head, raw, batch)
        cache["det_matched"] = matched  # the instance-mask loss reuses the assignment
        cls, box, ctr = fcos_loss(raw["cls_logits"], raw["box_ltrb"], raw["centerness"], raw["points"], matched,
                                  batch["gt_boxes"], batch["gt_labels"], valid, head.focal_alpha, head.focal_gamma)
        return {"cls": cls, "box": box, "ctr": ctr}

    def decode(self, name: str, outputs: Outputs, decoded: dict[str, torch.Tensor], image_size: tuple[int, int],
               settings: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return decode_detections(outputs[name], image_size, settings)

    def split(self, decoded: Mapping[str, torch.Tensor], preds: list[Pred], image_size: tuple[int, int],
              settings: Mapping[str, Any], shared: dict[str, Any]) -> None:
        """boxes (N, 4), scores, labels, locations per image; re-filtered by ``score_thr`` and ``max_det`` (a
        graph exported with lower values still honours higher ones set at load time)."""
        if "det_batch_index" not in decoded:
            return
        rows = []
        for i, p in enumerate(preds):
            sel = ((decoded["det_batch_index"] == i) & (decoded["det_scores"] > settings["score_thr"])).nonzero()[:, 0]
            sel = sel[decoded["det_scores"][sel].argsort(descending=True)][: int(settings["max_det"])]
            p.update(boxes=decoded["det_boxes"][sel], scores=decoded["det_scores"][sel],
                     labels=decoded["det_labels"][sel].long())
            if "det_locations" in decoded:
                p["locations"] = decoded["det_locations"][sel]
            n = len(decoded["det_scores"])
            # every flat detection, in order (one image, nothing filtered): a slice, so that the tasks that
            # extend the detections take views, not copies (100 mask logit maps: 2.5 MB at 320 px)
            rows.append(slice(None) if len(sel) == n and torch.equal(sel, torch.arange(n, device=sel.device))
                        else sel)
        # which flat detections each image kept (an index tensor or slice(None)), for the tasks that extend them
        shared["det_rows"] = rows

    def to_original(self, pred: Pred, out: Pred, orig_size: tuple[int, int], scale: float,
                    settings: Mapping[str, Any]) -> None:
        if "boxes" in pred:
            h, w = orig_size
            boxes = pred["boxes"].float() / scale
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            out["boxes"] = boxes

    def pseudo_targets(self, name: str, outputs: Outputs, preds: list[Pred], batch: dict[str, Any],
                       threshold: float | None, stats: dict[str, float], cache: dict[str, Any]) -> None:
        """The boxes scoring >= ``threshold`` (an image with none counts as background only)."""
        thr = pseudo_threshold(threshold, name)
        images = batch["image"]
        b, device = images.shape[0], images.device
        keep = [p["scores"] >= thr for p in preds]
        m = max([int(k.sum()) for k in keep] + [1])
        gt_boxes = torch.zeros(b, m, 4, device=device)
        gt_labels = torch.full((b, m), -1, dtype=torch.long, device=device)
        for i, (p, k) in enumerate(zip(preds, keep)):
            n = int(k.sum())
            gt_boxes[i, :n] = p["boxes"][k]
            gt_labels[i, :n] = p["labels"][k]
        batch.update(gt_boxes=gt_boxes, gt_labels=gt_labels, has_boxes=torch.ones(b, dtype=torch.bool, device=device),
                     has_masks=torch.zeros(b, dtype=torch.bool, device=device))
        cache["det_keep"] = keep  # the instance masks of the same boxes
        stats["pseudo/boxes_per_image"] = sum(int(k.sum()) for k in keep) / max(b, 1)

    def metrics(self, name: str, heads: list[Any], dataset: Any, tune: bool) -> None:
        return None  # scored by COCOeval (``coco_iou_type``) on the results the evaluator collects

    def annotations(self, pred: Pred, entries: list[dict[str, Any]], meta: Mapping[str, Any], masks: bool,
                    digits: int | None) -> list[dict[str, Any]]:
        """One entry per detection: bbox [x0, y0, x1, y1], score, category id (``meta['cat_ids']`` maps the
        contiguous labels to the data's ids; without it, label + 1) and name, area."""
        if "boxes" not in pred:
            return entries
        names, cat_ids = list(meta.get("class_names") or []), meta.get("cat_ids")
        for box, score, label in zip(pred["boxes"].tolist(), pred["scores"].float().tolist(),
                                     pred["labels"].tolist()):
            label = int(label)
            entries.append({"bbox": box, "score": round(float(score), digits) if digits is not None else float(score),
                            "category_id": cat_ids[label] if cat_ids else label + 1,
                            "category_name": names[label] if label < len(names) else str(label),
                            "area": (box[2] - box[0]) * (box[3] - box[1])})
        return entries

    def fill_from_data(self, cfg: Any, name: str, datamodule: Any) -> None:
        fill_object_classes(cfg, name, datamodule)

    def check_config(self, cfg: Any, name: str, head_cfg: Any) -> None:
        super().check_config(cfg, name, head_cfg)
        for key, low_open in (("score_thr", False), ("iou_thr", True)):
            if key in head_cfg:
                _probability(f"model.heads.{name}.{key}", head_cfg[key], low_open)
        if "max_det" in head_cfg:
            check_number(head_cfg.max_det, f"model.heads.{name}.max_det", 1, integer=True)


def fill_object_classes(cfg: Any, name: str, datamodule: Any) -> None:
    """``data.num_classes: null`` (data=yolo / voc): the number of object classes the training sets name."""
    if "num_classes" not in cfg.data or cfg.data.num_classes is not None:
        return
    datamodule.setup("fit")
    names = next((ds.class_names for ds in datamodule.train_sets.values() if getattr(ds, "class_names", None)), None)
    if not names:
        raise ConfigError(f"data.num_classes is null but no training data set names its object classes "
                          f"(head {name}); set data.num_classes=N")
    with open_dict(cfg):
        cfg.data.num_classes = len(names)
