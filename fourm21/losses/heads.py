"""One loss function per head kind: raw outputs + batch -> named scalar losses. The only path from outputs to losses.

A head kind is the head class's ``name`` (``cls``, ``det``, ``inst``, ``sem``, ``attr``, ``mlc``), as in
``fourm21.inference.decode``; each function reads its settings (``focal_alpha``, ``loss_stride``,
``dice_weight``, ``label_smoothing`` ...) from the head module it is given and its raw output from
``outputs[head.name]`` (the head's key under ``model.heads``). Each takes only the samples that carry its
target (task masks) and returns {} when none do. ``head_losses`` runs every head of a network, each after
the heads it ``requires``, sharing one ``cache`` (the detection assignment, ``det_matched``, that the
instance loss reuses).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.nn import functional as F

from fourm21.errors import ConfigError
from fourm21.losses.classification import softmax_ce_loss
from fourm21.losses.detection import fcos_assign, fcos_loss, level_ranges
from fourm21.losses.masks import prototype_mask_loss, semantic_loss
from fourm21.models.heads.attributes import AttributeHead
from fourm21.models.heads.base import Head
from fourm21.models.heads.classification import ClassificationHead
from fourm21.models.heads.detection import DetectionHead
from fourm21.models.heads.instance import InstanceMaskHead
from fourm21.models.heads.multilabel import MultiLabelHead
from fourm21.models.heads.semantic import SemanticHead
from fourm21.models.multitask import MultiTaskNet

Outputs = Mapping[str, Mapping[str, torch.Tensor]]
Losses = dict[str, torch.Tensor]


def cls_loss(head: ClassificationHead, outputs: Outputs, batch: dict[str, Any], cache: dict) -> Losses:
    has = batch["has_label"]
    if not has.any():
        return {}
    logits = outputs[head.name]["logits"][has]
    return {"ce": softmax_ce_loss(logits, batch["label"][has], head.label_smoothing)}


def det_assign(head: DetectionHead, raw: Mapping[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
    """(B, L) matched ground-truth index per location of the detection head's ``raw`` output, -1 for background."""
    strides = raw["point_strides"]
    ranges = torch.tensor(level_ranges(head.strides, head.range_mult), device=strides.device)
    level = torch.bucketize(strides, torch.tensor(head.strides, device=strides.device, dtype=strides.dtype))
    return fcos_assign(raw["points"], ranges[level], strides, batch["gt_boxes"], batch["gt_labels"],
                       head.center_radius)


def det_loss(head: DetectionHead, outputs: Outputs, batch: dict[str, Any], cache: dict) -> Losses:
    valid = batch["has_boxes"]
    if not valid.any():
        return {}
    raw = outputs[head.name]
    matched = det_assign(head, raw, batch)
    cache["det_matched"] = matched
    return fcos_loss(raw["cls_logits"], raw["box_ltrb"], raw["centerness"], raw["points"], matched,
                     batch["gt_boxes"], batch["gt_labels"], valid, head.focal_alpha, head.focal_gamma)


def inst_loss(head: InstanceMaskHead, outputs: Outputs, batch: dict[str, Any], cache: dict) -> Losses:
    valid = batch["has_masks"] & batch["has_boxes"]
    if not valid.any() or "det_matched" not in cache:
        return {}
    raw = outputs[head.name]
    return prototype_mask_loss(raw["proto"], raw["coefs"], cache["det_matched"], batch["gt_masks"],
                               batch["gt_boxes"], valid, tuple(batch["image"].shape[-2:]), head.max_pos,
                               head.dice_weight)


def sem_loss(head: SemanticHead, outputs: Outputs, batch: dict[str, Any], cache: dict) -> Losses:
    valid = batch["has_semantic"]
    if not valid.any():
        return {}
    return semantic_loss(outputs[head.name]["logits"], batch["semantic"], valid, head.dice_weight,
                         head.loss_stride, head.label_reduction, head.dice_classes)


def attr_loss(head: AttributeHead, outputs: Outputs, batch: dict[str, Any], cache: dict) -> Losses:
    """One cross-entropy per attribute group, over the images where that attribute is known."""
    raw = outputs[head.name]
    parts = {}
    for g in head.groups:
        target = batch["attributes"].get(g)
        if target is None:
            continue
        known = (target >= 0) & batch["has_attributes"]
        if known.any():
            parts[g] = F.cross_entropy(raw[g][known].float(), target[known], label_smoothing=head.label_smoothing)
    return parts


def mlc_loss(head: MultiLabelHead, outputs: Outputs, batch: dict[str, Any], cache: dict) -> Losses:
    has = batch["has_labels"]
    if not has.any():
        return {}
    logits = outputs[head.name]["logits"][has].float()
    return {"bce": F.binary_cross_entropy_with_logits(logits, batch["labels"][has].float())}


HEAD_LOSSES: dict[str, Callable[[Any, Outputs, dict[str, Any], dict], Losses]] = {
    "cls": cls_loss, "det": det_loss, "inst": inst_loss, "sem": sem_loss, "attr": attr_loss, "mlc": mlc_loss}


def head_loss(head: Head, outputs: Outputs, batch: dict[str, Any], cache: dict) -> Losses:
    """The named scalar losses of one head (by its kind, the class's ``name``); {} when no sample carries its target.

    ``outputs`` holds every head's raw output; ``cache`` passes shared work between the heads of one step."""
    kind = type(head).name
    if kind not in HEAD_LOSSES:
        raise ConfigError(f"model.heads.{head.name}: no loss for head kind '{kind}' "
                          f"(fourm21/losses/heads.py has {sorted(HEAD_LOSSES)})")
    return HEAD_LOSSES[kind](head, outputs, batch, cache)


def loss_order(heads: Mapping[str, Head]) -> list[str]:
    """The heads' keys, each after the heads it ``requires`` (``det`` before ``inst``)."""
    order: list[str] = []

    def visit(n: str) -> None:
        if n not in order:
            for r in heads[n].requires:
                visit(r)
            order.append(n)

    for n in heads:
        visit(n)
    return order


def head_losses(net: MultiTaskNet, outputs: Outputs, batch: dict[str, Any]) -> dict[str, Losses]:
    """{task: {part: scalar}} of every head of ``net``; a task none of the batch's samples carries is absent."""
    cache: dict[str, Any] = {}
    losses = {}
    for name in loss_order(net.heads):
        parts = head_loss(net.heads[name], outputs, batch, cache)
        if parts:
            losses[name] = parts
    return losses
