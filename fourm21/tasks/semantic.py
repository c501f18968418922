"""Semantic segmentation: the ``SemanticHead`` (things + background), CE + dice on a loss grid, the per-pixel
argmax of the upsampled logits, mIoU / dice / pixel accuracy, and the confident pixels as pseudo-labels."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.nn import functional as F

from fourm21.data.sample import IGNORE_INDEX
from fourm21.errors import check_number
from fourm21.losses.masks import semantic_loss
from fourm21.metrics.segmentation import SegmentationMetrics
from fourm21.models.heads.semantic import SemanticHead
from fourm21.tasks.base import Losses, Outputs, Pred, Task, pseudo_threshold
from fourm21.tasks.detection import fill_object_classes
from fourm21.tasks.masks import numpy_ok
from fourm21.tasks.registry import register


def semantic_labels(logits: torch.Tensor, size: tuple[int, int], label_stride: int = 1) -> torch.Tensor:
    """(B, C, h, w) logits -> (B, H, W) argmax of the bilinearly upsampled logits.

    With ``label_stride`` s > 1 the argmax is taken on an (H/s, W/s) grid, at the centres of s x s
    pixel cells, and each cell repeats its label: (C x H x W) upsampled logits cost more on a CPU than
    the lite network's forward pass, and logits predicted at stride >= 4 hold little finer detail.
    """
    h, w = size
    grid = (-(-h // label_stride), -(-w // label_stride))
    # channels-last: upsampling and the argmax over classes read contiguous memory (about 3x faster)
    up = F.interpolate(logits.float().contiguous(memory_format=torch.channels_last), size=grid, mode="bilinear",
                       align_corners=False)
    if numpy_ok(up):  # NumPy's argmax over contiguous class rows: ~2x faster than torch's (same ties)
        b, c, gh, gw = up.shape
        rows = up.detach().permute(0, 2, 3, 1).reshape(-1, c).numpy()
        labels = torch.from_numpy(rows.argmax(1)).view(b, gh, gw)
    else:
        labels = up.argmax(1)
    if label_stride > 1:
        labels = labels.repeat_interleave(label_stride, 1).repeat_interleave(label_stride, 2)[:, :h, :w]
    return labels


class SemanticTaskMetrics(SegmentationMetrics):
    """mIoU, dice and pixel accuracy over the val images that carry a semantic map."""

    def add(self, preds: list[Pred], batch: dict) -> None:
        if "semantic" in preds[0]:
            has = batch["has_semantic"].cpu()
            pred = torch.stack([p["semantic"] for p in preds]).cpu()
            self.update(pred[has], batch["semantic"].cpu()[has])


@register
class SemanticTask(Task):
    kind = "sem"
    head = SemanticHead
    main_metric = "miou"
    data_keys = {"num_classes": "num_classes"}
    pipeline_tag, pipeline_rank = "image-segmentation", 2
    overrides = {"sem_label_stride": "label_stride"}
    decoded_keys = ("sem_labels",)

    def settings(self, head: Any) -> dict[str, Any]:
        return {"label_stride": int(head.label_stride)}

    def saved_settings(self, head_cfg: Mapping[str, Any], saved: Mapping[str, Any], meta: Mapping[str, Any]
                       ) -> dict[str, Any]:
        values = super().saved_settings(head_cfg, saved, meta)
        if "sem_label_stride" in meta and not saved:  # an export written before settings were saved per head
            values["label_stride"] = int(meta["sem_label_stride"])
        return values

    def check_override(self, key: str, value: Any) -> Any:
        check_number(value, key, 1, integer=True)
        return int(value)

    def loss(self, name: str, head: Any, outputs: Outputs, batch: dict[str, Any], cache: dict[str, Any]) -> Losses:
        valid = batch["has_semantic"]
        if not valid.any():
            return {}
        return semantic_loss(outputs[name]["logits"], batch["semantic"], valid, head.dice_weight,
                             head.loss_stride, head.label_reduction, head.dice_classes)

    def decode(self, name: str, outputs: Outputs, decoded: dict[str, torch.Tensor], image_size: tuple[int, int],
               settings: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return {"sem_labels": semantic_labels(outputs[name]["logits"], image_size, int(settings["label_stride"]))}

    def split(self, decoded: Mapping[str, torch.Tensor], preds: list[Pred], image_size: tuple[int, int],
              settings: Mapping[str, Any], shared: dict[str, Any]) -> None:
        """semantic (H, W) class ids, 0 = background."""
        if "sem_labels" in decoded:
            for i, p in enumerate(preds):
                p["semantic"] = decoded["sem_labels"][i].long()

    def to_original(self, pred: Pred, out: Pred, orig_size: tuple[int, int], scale: float,
                    settings: Mapping[str, Any]) -> None:
        if "semantic" in pred:
            h, w = orig_size
            vh, vw = max(1, round(h * scale)), max(1, round(w * scale))  # >= 1: a 6000 x 1 image has a row
            sem = pred["semantic"][:vh, :vw]
            if (vh, vw) != (h, w):
                sem = F.interpolate(sem[None, None].float(), size=(h, w), mode="nearest")[0, 0].long()
            out["semantic"] = sem

    def pseudo_targets(self, name: str, outputs: Outputs, preds: list[Pred], batch: dict[str, Any],
                       threshold: float | None, stats: dict[str, float], cache: dict[str, Any]) -> None:
        """The per-pixel argmax where its probability >= ``threshold``; other pixels are ignored."""
        images = batch["image"]
        b, _, h, w = images.shape
        logits = F.interpolate(outputs[name]["logits"].float(), size=(h, w), mode="bilinear", align_corners=False)
        conf, label = logits.softmax(1).max(1)
        confident = conf >= pseudo_threshold(threshold, name)
        batch["semantic"] = torch.where(confident, label, torch.full_like(label, IGNORE_INDEX))
        batch["has_semantic"] = torch.ones(b, dtype=torch.bool, device=images.device)
        stats[f"pseudo/{name}_pixel_frac"] = confident.float().mean().item()

    def metrics(self, name: str, heads: list[Any], dataset: Any, tune: bool) -> SemanticTaskMetrics:
        return SemanticTaskMetrics(heads[0].num_classes)

    def fill_from_data(self, cfg: Any, name: str, datamodule: Any) -> None:
        fill_object_classes(cfg, name, datamodule)

    def check_config(self, cfg: Any, name: str, head_cfg: Any) -> None:
        super().check_config(cfg, name, head_cfg)
        if "label_stride" in head_cfg:
            check_number(head_cfg.label_stride, f"model.heads.{name}.label_stride", 1, integer=True)
