"""Instance masks (YOLACT / YOLOv8-seg style) on top of the detection task: the ``InstanceMaskHead``, the
prototype mask loss on the detection assignment, each kept detection's mask assembled inside its box
(``fourm21.tasks.masks.paste_masks``), COCO mask AP and the RLE of each detection entry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from fourm21.data.coco import mask_coverage
from fourm21.losses.masks import prototype_mask_loss
from fourm21.models.heads.instance import InstanceMaskHead
from fourm21.tasks.base import Losses, Outputs, Pred, Task
from fourm21.tasks.detection import DetectionTask
from fourm21.tasks.masks import paste_masks
from fourm21.tasks.registry import register


def instance_mask_logits(raw: Mapping[str, torch.Tensor], batch_index: torch.Tensor, locations: torch.Tensor
                         ) -> torch.Tensor:
    """(K, Hp, Wp) mask logits at prototype resolution of the detections at (``batch_index``, ``locations``):
    each detection's coefficients times its image's prototypes."""
    proto, coefs = raw["proto"].float(), raw["coefs"].float()
    picked = coefs[batch_index, locations]  # (K, k)
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        # one graph for any batch, one matrix product: each detection's coefficients placed in its image's
        # block of a (K, B * k) matrix times all prototypes (B * k, Hp * Wp). Gathering each detection's
        # prototypes instead copies a (K, k, Hp, Wp) tensor (~40 MB at 100 detections, 320 px), which
        # costs an exported graph more than the product itself
        b, k, hp, wp = proto.shape
        own = (batch_index[:, None] == torch.arange(b, device=proto.device)[None]).to(picked.dtype)  # (K, B)
        blocks = (own[:, :, None] * picked[:, None, :]).flatten(1)  # (K, B * k)
        return (blocks @ proto.reshape(b * k, hp * wp)).reshape(-1, hp, wp)
    # eager: one (n, k) @ (k, Hp * Wp) product per image, no (K, k, Hp, Wp) copy. A matmul, not
    # einsum("nk,khw->nhw"): torch's einsum takes a batched path for that pattern, ~40x slower on a CPU
    b, k, hp, wp = proto.shape
    if b == 1:
        return (picked @ proto[0].reshape(k, hp * wp)).reshape(-1, hp, wp).float()  # autocast: bf16
    out = proto.new_zeros((len(batch_index), hp, wp))
    for i in batch_index.unique().tolist():
        sel = batch_index == i
        out[sel] = (picked[sel] @ proto[i].reshape(k, hp * wp)).reshape(-1, hp, wp).float()
    return out


@register
class InstanceTask(Task):
    kind = "inst"
    head = InstanceMaskHead
    requires = (DetectionTask.kind,)
    main_metric = "map"
    coco_iou_type = "segm"
    pipeline_tag, pipeline_rank = "image-segmentation", 1
    decoded_keys = ("det_mask_logits",)
    flat_keys = decoded_keys
    detection_keys = ("masks", "mask_logits")

    def settings(self, head: Any) -> dict[str, Any]:
        return {"mask_thr": float(head.mask_thr)}

    def loss(self, name: str, head: Any, outputs: Outputs, batch: dict[str, Any], cache: dict[str, Any]) -> Losses:
        valid = batch["has_masks"] & batch["has_boxes"]
        if not valid.any() or "det_matched" not in cache:
            return {}
        raw = outputs[name]
        return prototype_mask_loss(raw["proto"], raw["coefs"], cache["det_matched"], batch["gt_masks"],
                                   batch["gt_boxes"], valid, tuple(batch["image"].shape[-2:]), head.max_pos,
                                   head.dice_weight)

    def decode(self, name: str, outputs: Outputs, decoded: dict[str, torch.Tensor], image_size: tuple[int, int],
               settings: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        if "det_batch_index" not in decoded:
            return {}
        return {"det_mask_logits": instance_mask_logits(outputs[name], decoded["det_batch_index"],
                                                        decoded["det_locations"])}

    def split(self, decoded: Mapping[str, torch.Tensor], preds: list[Pred], image_size: tuple[int, int],
              settings: Mapping[str, Any], shared: dict[str, Any]) -> None:
        """mask_logits (N, Hp, Wp) and masks (N, H, W) bool at the input size, of the detections kept."""
        if "det_mask_logits" not in decoded or "det_rows" not in shared:
            return
        for p, sel in zip(preds, shared["det_rows"]):
            p["mask_logits"] = decoded["det_mask_logits"][sel].float()
            p["masks"] = paste_masks(p["mask_logits"], p["boxes"], image_size, threshold=float(settings["mask_thr"]))

    def to_original(self, pred: Pred, out: Pred, orig_size: tuple[int, int], scale: float,
                    settings: Mapping[str, Any]) -> None:
        """Masks re-assembled from the prototype-resolution logits straight at the original size (one
        interpolation, not upsample-to-input then resize), inside the boxes already mapped back."""
        h, w = orig_size
        # the part of the input that is image, not padding (a side of >= 1 pixel, as the letterbox resizes it)
        vh, vw = max(1, round(h * scale)), max(1, round(w * scale))
        if "mask_logits" in pred and "masks" in pred and "boxes" in out:
            in_h, in_w = pred["masks"].shape[-2:]  # the network input, which the prototypes span
            lh, lw = pred["mask_logits"].shape[-2:]
            out["masks"] = paste_masks(pred["mask_logits"], out["boxes"], (h, w),
                                       scale=(lh / in_h * vh / h, lw / in_w * vw / w),
                                       threshold=float(settings["mask_thr"]))
        elif "masks" in pred:
            masks = pred["masks"][:, :vh, :vw]
            if (vh, vw) != (h, w):
                masks = torch.nn.functional.interpolate(masks[:, None].float(), size=(h, w), mode="bilinear",
                                                        align_corners=False)[:, 0] > 0.5 if len(masks) else \
                    masks.new_zeros((0, h, w))
            out["masks"] = masks

    def pseudo_targets(self, name: str, outputs: Outputs, preds: list[Pred], batch: dict[str, Any],
                       threshold: float | None, stats: dict[str, float], cache: dict[str, Any]) -> None:
        """The masks of the boxes the detection task kept, at the prototype resolution the data pipeline
        makes them (``mask_coverage``)."""
        keep = cache.get("det_keep")
        if keep is None:
            return
        images = batch["image"]
        b, _, h, w = images.shape
        m = batch["gt_boxes"].shape[1]
        proto = outputs[name].get("proto")
        stride = h // proto.shape[-2] if proto is not None else 1
        gt_masks = mask_coverage(torch.zeros(b * m, h, w, dtype=torch.bool, device=images.device), stride)
        gt_masks = gt_masks.view(b, m, *gt_masks.shape[-2:])
        for i, (p, k) in enumerate(zip(preds, keep)):
            n = int(k.sum())
            if "masks" in p and n:
                gt_masks[i, :n] = mask_coverage(p["masks"][k], stride)
        batch.update(gt_masks=gt_masks, has_masks=torch.ones(b, dtype=torch.bool, device=images.device))

    def annotations(self, pred: Pred, entries: list[dict[str, Any]], meta: Mapping[str, Any], masks: bool,
                    digits: int | None) -> list[dict[str, Any]]:
        """Each detection's mask as COCO RLE (``segmentation``) and its area in pixels."""
        m = pred.get("masks") if masks else None
        if m is None or not len(m) or len(m) != len(entries):
            return entries
        rles = mask_utils.encode(np.asfortranarray(m.cpu().numpy().astype(np.uint8).transpose(1, 2, 0)))
        for e, rle in zip(entries, rles):
            e["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
            e["area"] = float(mask_utils.area(rle))
        return entries
