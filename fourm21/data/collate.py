"""Batch Samples into padded tensors plus per-sample task masks (``has_<target>``), by ``sample.TARGETS``."""

from __future__ import annotations

import torch

from fourm21.data.sample import TARGETS, Sample, Target


def collate_samples(samples: list[Sample | None]) -> dict | None:
    """Stack Samples; each target of ``fourm21.data.sample.TARGETS`` is batched by its kind, filled where a
    sample lacks it, with its task mask ``has_<target>`` (B,) bool.

    None entries (images a data set skipped under ``data.on_bad_image=skip``) are left out; a batch
    with no sample left is None, which the training and validation steps skip.

    Returns image (B, 3, H, W); label (B,) with -1 where absent; gt_boxes (B, M, 4); gt_labels (B, M)
    with -1 for padding; gt_keypoints (B, M, K, 3); gt_masks (B, M, h, w) at the samples' mask resolution
    (bool at full resolution, else coverage fractions; see ``CocoDataset.mask_stride``); semantic (B, H, W)
    with IGNORE_INDEX where absent; attributes {group: (B,) class or -1}; labels (B, C) multi-hot; caption_tokens (B, T)
    (0 = padding); the has_* masks; meta list.
    """
    samples = [s for s in samples if s is not None]
    if not samples:
        return None
    images = torch.stack([s["image"] for s in samples])
    batch: dict = {"image": images}
    instances = max([len(s["boxes"]) for s in samples if "boxes" in s] + [1])
    for target in TARGETS:
        batch[target.batch] = _batched(target, samples, images, instances)
        if target.has is not None:
            batch[target.has] = torch.tensor([target.key in s for s in samples])
    batch["meta"] = [s["meta"] for s in samples]
    return batch


# instance targets of a batch in which no sample has any: their shapes (after N) and dtypes
_ABSENT_SHAPES = {"boxes": lambda h, w: (4,), "box_labels": lambda h, w: (), "masks": lambda h, w: (h, w),
                  "keypoints": lambda h, w: (0, 3)}
_ABSENT_DTYPES = {"boxes": torch.float32, "box_labels": torch.long, "masks": torch.bool, "keypoints": torch.float32}


def _batched(t: Target, samples: list[Sample], images: torch.Tensor, instances: int) -> torch.Tensor | dict:
    b, _, h, w = images.shape
    present = [s[t.key] for s in samples if t.key in s]
    if t.kind == "scalar":
        return torch.tensor([s.get(t.key, t.fill) for s in samples], dtype=torch.long)
    if t.kind == "groups":
        groups = sorted({g for s in samples for g in s.get(t.key, {})})
        return {g: torch.tensor([s.get(t.key, {}).get(g, t.fill) for s in samples], dtype=torch.long)
                for g in groups}
    if t.kind == "dense":  # uint8 labels (the data sets' own) stay bytes: the loss and metrics take them as long
        dtypes = {v.dtype for v in present}
        out = torch.full((b, h, w), int(t.fill), dtype=dtypes.pop() if len(dtypes) == 1 else torch.long)
    elif t.kind == "vector":
        out = torch.full((b, len(present[0]) if present else 0), float(t.fill))
    elif t.kind == "sequence":
        out = torch.full((b, max([len(v) for v in present] + [0])), int(t.fill), dtype=torch.long)
    elif t.kind == "instances":  # (N, ...) per sample -> (B, M, ...); a batch without any: boxes-like defaults
        first = present[0] if present else None
        trailing = tuple(first.shape[1:]) if first is not None else _ABSENT_SHAPES[t.key](h, w)
        dtype = first.dtype if first is not None else _ABSENT_DTYPES[t.key]
        out = torch.full((b, instances, *trailing), t.fill, dtype=dtype)
    else:
        raise ValueError(f"unknown target kind {t.kind!r} for {t.key!r}")
    for i, s in enumerate(samples):
        if t.key in s and len(s[t.key]):
            value = s[t.key]
            out[i, : len(value)] = value
    return out
