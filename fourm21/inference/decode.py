"""One decoder per head: raw outputs -> predictions. The only path from logits to predictions.

``decode_batch`` is batched and traceable (the end-to-end ONNX graph is traced from it); it returns the
whole batch's detections as one flat list with an image index, as exported detectors do, and the
image-level outputs as (B, ...) tensors. ``split_images`` turns that into one dict per image (masks
pasted at the input size); ``decode`` is the two together, what validation, predict, the API and every
runner call. Settings (thresholds, ``max_det`` ...) come in a ``DecodeSettings``, read from a network's
heads or, for an exported graph, from the export's config: no network is needed to decode.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from hydra.utils import get_class
from torch.nn import functional as F
from torchvision.ops import batched_nms

from fourm21.errors import ConfigError
from fourm21.inference.masks import paste_masks
from fourm21.losses.detection import decode_ltrb
from fourm21.models.heads.detection import make_points
from fourm21.models.multitask import MultiTaskNet

Outputs = Mapping[str, Mapping[str, torch.Tensor]]


@dataclass(frozen=True)
class DecodeSettings:
    """Everything decoding reads besides the raw outputs.

    ``heads`` maps each output key to its head kind (``det``, ``inst``, ``sem``, ``cls``, ``attr``, ``mlc``:
    the head class's ``name``); the other fields are the heads' config keys of the same meaning, None
    where the model has no such head. ``mlc_thresholds`` (C,) are the multi-label head's decision
    thresholds (tuned on val while fitting, saved with the weights and in an export's config)."""

    heads: dict[str, str]
    det_strides: tuple[int, ...] = ()
    score_thr: float | None = None
    iou_thr: float | None = None
    max_det: int | None = None
    pre_nms_topk: int | None = None
    mask_thr: float | None = None
    cls_topk: int | None = None
    sem_label_stride: int | None = None
    mlc_thresholds: torch.Tensor | None = field(default=None, compare=False)

    def key(self, kind: str) -> str | None:
        """The output key of the head of ``kind`` (None when the model has none)."""
        return next((name for name, k in self.heads.items() if k == kind), None)

    def with_overrides(self, **values: Any) -> DecodeSettings:
        """A copy with the non-None ``values`` replaced (``score_thr=0.3`` ...), checked."""
        values = {k: v for k, v in values.items() if v is not None}
        if "sem_label_stride" in values and int(values["sem_label_stride"]) < 1:
            raise ConfigError(f"sem_label_stride must be >= 1, got {values['sem_label_stride']}")
        return replace(self, **values)

    @classmethod
    def from_net(cls, net: MultiTaskNet) -> DecodeSettings:
        """The settings the network's heads were built with (and the tuned multi-label thresholds)."""
        return cls.from_heads(net.heads)

    @classmethod
    def from_heads(cls, heads: Mapping[str, Any]) -> DecodeSettings:
        """The settings of ``{output key: head}`` (heads alone, e.g. in a test)."""
        kinds = {name: type(head).name for name, head in heads.items()}
        values: dict[str, Any] = {}
        for name, head in heads.items():
            values.update(_settings_of(kinds[name], head))
        return cls(heads=kinds, **values)

    @classmethod
    def from_config(cls, model_cfg: Mapping[str, Any], mlc_thresholds: list[float] | None = None) -> DecodeSettings:
        """The settings of an exported model, from its ``model`` config (no network built)."""
        heads, values = {}, {}
        for name, hcfg in (model_cfg.get("heads") or {}).items():
            if not hcfg or not hcfg.get("enabled", True):
                continue
            kind = get_class(hcfg["_target_"]).name
            heads[name] = kind
            if kind == "mlc":  # the export's tuned thresholds, else the config's starting value
                keys = _Keys(hcfg)
                values["mlc_thresholds"] = torch.tensor(
                    mlc_thresholds if mlc_thresholds is not None else [float(keys.threshold)] * int(keys.num_classes),
                    dtype=torch.float32)
            else:
                values.update(_settings_of(kind, _Keys(hcfg)))
        return cls(heads=heads, **values)


class _Keys:
    """Attribute access to a head's config keys, so ``_settings_of`` reads a config as it reads a head."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self._cfg = cfg

    def __getattr__(self, key: str) -> Any:
        if key not in self._cfg:
            raise ConfigError(f"model.heads: a head config lacks '{key}', which decoding needs")
        return self._cfg[key]


def _settings_of(kind: str, head: Any) -> dict[str, Any]:
    if kind == "det":
        return {"det_strides": tuple(int(s) for s in head.strides), "score_thr": float(head.score_thr),
                "iou_thr": float(head.iou_thr), "max_det": int(head.max_det), "pre_nms_topk": int(head.pre_nms_topk)}
    if kind == "inst":
        return {"mask_thr": float(head.mask_thr)}
    if kind == "cls":
        return {"cls_topk": int(head.topk)}
    if kind == "sem":
        return {"sem_label_stride": int(head.label_stride)}
    if kind == "mlc":
        return {"mlc_thresholds": head.thresholds.detach().float().cpu()}
    return {}


def detection_points(raw: Mapping[str, torch.Tensor], image_size: tuple[int, int],
                     strides: tuple[int, ...]) -> torch.Tensor:
    """The location centres of ``raw`` (an exported graph does not return them: they depend only on the
    input size)."""
    if "points" in raw:
        return raw["points"]
    shapes = [(-(-image_size[0] // s), -(-image_size[1] // s)) for s in strides]
    return make_points(shapes, list(strides), raw["cls_logits"].device)[0]


def decode_detections(raw: Mapping[str, torch.Tensor], image_size: tuple[int, int], s: DecodeSettings
                      ) -> dict[str, torch.Tensor]:
    """Scores sqrt(class x centerness), the ``pre_nms_topk`` best per image, above ``score_thr``, per-class
    NMS within each image, at most ``max_det`` per image -> flat ``det_batch_index`` (K,), ``det_boxes``
    (K, 4) xyxy input pixels, ``det_scores``, ``det_labels``, ``det_locations`` (K,), sorted by score."""
    scores = (raw["cls_logits"].float().sigmoid() * raw["centerness"].float().sigmoid()[..., None]).sqrt()
    b, n_loc, n_cls = scores.shape
    k = min(int(s.pre_nms_topk), n_loc * n_cls)
    top_s, top_i = scores.reshape(b, n_loc * n_cls).topk(k, dim=1)  # (B, k)
    loc, lab = top_i // n_cls, top_i % n_cls
    points = detection_points(raw, image_size, s.det_strides)
    ltrb = torch.gather(raw["box_ltrb"].float(), 1, loc[..., None].expand(b, k, 4))
    boxes = decode_ltrb(points[loc], ltrb)
    h, w = image_size
    boxes = torch.stack([boxes[..., 0].clamp(0, w), boxes[..., 1].clamp(0, h), boxes[..., 2].clamp(0, w),
                         boxes[..., 3].clamp(0, h)], dim=-1)
    batch_idx = torch.arange(b, device=scores.device)[:, None].expand(b, k).reshape(-1)
    flat_boxes, flat_scores, flat_loc, flat_lab = boxes.reshape(-1, 4), top_s.reshape(-1), loc.reshape(-1), \
        lab.reshape(-1)
    # below the threshold first: NMS only lets a box suppress lower-scored ones, so the kept set is the same
    above = (flat_scores > s.score_thr).nonzero()[:, 0]
    keep = above[batched_nms(flat_boxes[above], flat_scores[above], batch_idx[above] * n_cls + flat_lab[above],
                             float(s.iou_thr))]
    # at most max_det per image: keep is sorted by score, so a running count per image ranks them
    in_image = (batch_idx[keep][:, None] == torch.arange(b, device=scores.device)[None]).long()
    rank = (in_image.cumsum(0) * in_image).sum(1)
    keep = keep[rank <= int(s.max_det)]
    return {"det_batch_index": batch_idx[keep], "det_boxes": flat_boxes[keep], "det_scores": flat_scores[keep],
            "det_labels": flat_lab[keep], "det_locations": flat_loc[keep]}


def instance_mask_logits(raw: Mapping[str, torch.Tensor], batch_index: torch.Tensor, locations: torch.Tensor
                         ) -> torch.Tensor:
    """(K, Hp, Wp) mask logits at prototype resolution of the detections at (``batch_index``, ``locations``):
    each detection's coefficients times its image's prototypes."""
    proto, coefs = raw["proto"].float(), raw["coefs"].float()
    picked = coefs[batch_index, locations]  # (K, k)
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        # one graph for any batch: gather each detection's prototypes
        return torch.einsum("nk,nkhw->nhw", picked, proto[batch_index])
    out = proto.new_zeros((len(batch_index), *proto.shape[-2:]))
    for i in batch_index.unique().tolist():  # eager: one product per image, no (K, k, Hp, Wp) copy
        sel = batch_index == i
        out[sel] = torch.einsum("nk,khw->nhw", picked[sel], proto[i]).float()  # autocast: bf16
    return out


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
    labels = up.argmax(1)
    if label_stride > 1:
        labels = labels.repeat_interleave(label_stride, 1).repeat_interleave(label_stride, 2)[:, :h, :w]
    return labels


def decode_batch(outputs: Outputs, image_size: tuple[int, int], s: DecodeSettings) -> dict[str, torch.Tensor]:
    """Every head's raw output -> batch-level predictions: the flat ``det_*`` detections (and their
    ``det_mask_logits`` (K, Hp, Wp)), ``cls_probs`` (B, K), ``sem_labels`` (B, H, W), ``attr.<group>.probs``
    (B, K), ``mlc_probs`` (B, C) — whichever heads the model has."""
    out: dict[str, torch.Tensor] = {}
    det, inst, cls, sem = (s.key(k) for k in ("det", "inst", "cls", "sem"))
    if det is not None and det in outputs:
        out.update(decode_detections(outputs[det], image_size, s))
        if inst is not None and inst in outputs:
            out["det_mask_logits"] = instance_mask_logits(outputs[inst], out["det_batch_index"],
                                                          out["det_locations"])
    if cls is not None and cls in outputs:
        out["cls_probs"] = outputs[cls]["logits"].float().softmax(-1)
    if sem is not None and sem in outputs:
        out["sem_labels"] = semantic_labels(outputs[sem]["logits"], image_size, int(s.sem_label_stride))
    for name, kind in s.heads.items():
        if kind == "attr" and name in outputs:
            for group, logits in outputs[name].items():
                out[f"attr.{group}.probs"] = logits.float().softmax(-1)
        elif kind == "mlc" and name in outputs:
            out["mlc_probs"] = outputs[name]["logits"].float().sigmoid()
    return out


def batch_size_of(decoded: Mapping[str, torch.Tensor], outputs: Outputs | None = None) -> int:
    if outputs:
        return next(iter(next(iter(outputs.values())).values())).shape[0]
    per_image = [v for k, v in decoded.items() if not k.startswith("det_")]
    if not per_image:
        raise ValueError("cannot tell the batch size of detections alone; pass batch=")
    return per_image[0].shape[0]


def split_images(decoded: Mapping[str, torch.Tensor], batch: int, image_size: tuple[int, int],
                 s: DecodeSettings) -> list[dict[str, torch.Tensor]]:
    """``decode_batch``'s output -> one dict per image: boxes (N, 4), scores, labels, locations,
    mask_logits (N, Hp, Wp) and masks (N, H, W) bool at the input size, class_probs / class_label /
    class_topk / class_topk_probs, semantic (H, W), attr.<group>.probs / .label, label_probs / label_set.

    Detections are re-filtered by ``s`` (score_thr, max_det): a graph exported with lower values still
    honours higher ones set at load time."""
    preds: list[dict[str, torch.Tensor]] = [{} for _ in range(batch)]
    if "det_batch_index" in decoded:
        for i, p in enumerate(preds):
            sel = ((decoded["det_batch_index"] == i) & (decoded["det_scores"] > s.score_thr)).nonzero()[:, 0]
            sel = sel[decoded["det_scores"][sel].argsort(descending=True)][: int(s.max_det)]
            p.update(boxes=decoded["det_boxes"][sel], scores=decoded["det_scores"][sel],
                     labels=decoded["det_labels"][sel].long())
            if "det_locations" in decoded:
                p["locations"] = decoded["det_locations"][sel]
            if "det_mask_logits" in decoded:
                p["mask_logits"] = decoded["det_mask_logits"][sel].float()
                p["masks"] = paste_masks(p["mask_logits"], p["boxes"], image_size, threshold=float(s.mask_thr))
    if "cls_probs" in decoded:
        probs = decoded["cls_probs"]
        top_p, top_i = probs.topk(min(int(s.cls_topk), probs.shape[-1]), dim=-1)
        for i, p in enumerate(preds):
            p.update(class_probs=probs[i], class_label=top_i[i, 0], class_topk=top_i[i], class_topk_probs=top_p[i])
    if "sem_labels" in decoded:
        for i, p in enumerate(preds):
            p["semantic"] = decoded["sem_labels"][i].long()
    for key, probs in decoded.items():
        if key.startswith("attr."):
            group = key[len("attr."):-len(".probs")]
            for i, p in enumerate(preds):
                p[f"attr.{group}.probs"] = probs[i]
                p[f"attr.{group}.label"] = probs[i].argmax()
    if "mlc_probs" in decoded:
        probs = decoded["mlc_probs"]
        chosen = probs > s.mlc_thresholds.to(probs.device)
        for i, p in enumerate(preds):
            p.update(label_probs=probs[i], label_set=chosen[i])
    return preds


@torch.no_grad()
def decode(outputs: Outputs, image_size: tuple[int, int], s: DecodeSettings) -> list[dict[str, torch.Tensor]]:
    """Raw outputs -> one dict of predictions per image, on the network input (see ``split_images``)."""
    return split_images(decode_batch(outputs, image_size, s), batch_size_of({}, outputs), image_size, s)
