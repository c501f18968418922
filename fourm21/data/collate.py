"""Batch Samples into padded tensors plus per-sample task masks (``has_<target>``)."""

from __future__ import annotations

import torch

from fourm21.data.sample import IGNORE_INDEX, Sample


def collate_samples(samples: list[Sample | None]) -> dict | None:
    """Stack Samples; variable-length instance targets are padded to the batch's largest count.

    None entries (images a data set skipped under ``data.on_bad_image=skip``) are left out; a batch
    with no sample left is None, which the training and validation steps skip.

    Returns image (B, 3, H, W); label (B,) with -1 where absent; gt_boxes (B, M, 4);
    gt_labels (B, M) with -1 for padding; gt_masks (B, M, h, w) at the samples' mask resolution (bool at
    full resolution, else coverage fractions; see ``CocoDataset.mask_stride``); semantic (B, H, W) with
    IGNORE_INDEX where absent; attributes {group: (B,) class or -1}; labels (B, C) multi-hot;
    caption_tokens (B, T) (0 = padding); has_label / has_boxes / has_masks / has_semantic /
    has_attributes / has_labels / has_caption (B,) bool; meta list.
    """
    samples = [s for s in samples if s is not None]
    if not samples:
        return None
    images = torch.stack([s["image"] for s in samples])
    b, _, h, w = images.shape
    m = max([len(s["boxes"]) for s in samples if "boxes" in s] + [1])
    gt_boxes = torch.zeros(b, m, 4)
    gt_labels = torch.full((b, m), -1, dtype=torch.long)
    mask_shape, mask_dtype = next(((tuple(s["masks"].shape[-2:]), s["masks"].dtype) for s in samples if "masks" in s),
                                  ((h, w), torch.bool))
    gt_masks = torch.zeros(b, m, *mask_shape, dtype=mask_dtype)
    semantic = torch.full((b, h, w), IGNORE_INDEX, dtype=torch.long)
    for i, s in enumerate(samples):
        if "boxes" in s:
            n = len(s["boxes"])
            gt_boxes[i, :n] = s["boxes"]
            gt_labels[i, :n] = s["box_labels"]
            if "masks" in s and n:
                gt_masks[i, :n] = s["masks"]
        if "semantic" in s:
            semantic[i] = s["semantic"]
    groups = sorted({g for s in samples for g in s.get("attributes", {})})
    attributes = {g: torch.tensor([s.get("attributes", {}).get(g, -1) for s in samples], dtype=torch.long)
                  for g in groups}
    num_labels = next((len(s["labels"]) for s in samples if "labels" in s), 0)
    labels = torch.stack([s["labels"] if "labels" in s else torch.zeros(num_labels) for s in samples]) \
        if num_labels else torch.zeros(b, 0)
    max_tokens = max([len(s["caption_tokens"]) for s in samples if "caption_tokens" in s] + [0])
    tokens = torch.zeros(b, max_tokens, dtype=torch.long)
    for i, s in enumerate(samples):
        if "caption_tokens" in s:
            tokens[i, : len(s["caption_tokens"])] = s["caption_tokens"]
    return {
        "image": images,
        "attributes": attributes,
        "labels": labels,
        "caption_tokens": tokens,
        "has_attributes": torch.tensor(["attributes" in s for s in samples]),
        "has_labels": torch.tensor(["labels" in s for s in samples]),
        "has_caption": torch.tensor(["caption_tokens" in s for s in samples]),
        "label": torch.tensor([s.get("label", -1) for s in samples], dtype=torch.long),
        "gt_boxes": gt_boxes,
        "gt_labels": gt_labels,
        "gt_masks": gt_masks,
        "semantic": semantic,
        "has_label": torch.tensor(["label" in s for s in samples]),
        "has_boxes": torch.tensor(["boxes" in s for s in samples]),
        "has_masks": torch.tensor(["masks" in s for s in samples]),
        "has_semantic": torch.tensor(["semantic" in s for s in samples]),
        "meta": [s["meta"] for s in samples],
    }
