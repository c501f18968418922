"""The Sample contract: one dict per image, carrying only the targets its dataset has.

Keys (all optional except ``image`` and ``meta``):
    image     (3, H, W) uint8 pixels (the network normalises them: ``fourm21.models.backbone.INPUT_CONTRACT``)
    label     int, image-level class for the softmax head
    boxes     (N, 4) float32, xyxy in pixels of ``image``
    box_labels (N,) int64, contiguous detection class ids (0-based)
    masks     (N, h, w) instance masks aligned with ``boxes``, at the resolution the mask loss uses:
              bool at (H, W), or float cell coverage in [0, 1] at (H/s, W/s) (``mask_stride`` s)
    keypoints (N, K, 3) float32 [x, y, v] aligned with ``boxes`` (pixels of ``image``; v: 0 unlabelled or out
              of view, 1 labelled but hidden, 2 visible), when the data set names keypoints
    semantic  (H, W) uint8 (or int64), 0 = background, k = detection class k-1, 255 = ignore
    attributes {group: int}, a class index per attribute group, -1 = missing
    labels    (C,) float multi-hot, for the multi-label head
    caption   str, with caption_tokens (T,) int64 hashed word ids (fourm21.data.text)
    meta      dict: image_id, source, orig_size (h, w), scale, pad (left, top)

A task is trained on a sample only when the sample carries that task's target; the
batch records this as ``has_<target>`` flags (the task masks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IGNORE_INDEX = 255


@dataclass(frozen=True)
class Target:
    """How one Sample key becomes a batch tensor: under ``batch``, with the task mask ``has`` (None: the
    key shares another's mask), batched as ``kind`` with ``fill`` where a sample lacks it:
    ``scalar`` (B,), ``vector`` (B, C), ``sequence`` (B, T max), ``dense`` (B, H, W),
    ``instances`` (B, M max, ...), ``groups`` ({group: (B,)})."""

    key: str
    batch: str
    has: str | None
    kind: str
    fill: float


# The one table collation follows (``fourm21.data.collate``); a new target is one line here.
TARGETS: tuple[Target, ...] = (
    Target("label", "label", "has_label", "scalar", -1),
    Target("boxes", "gt_boxes", "has_boxes", "instances", 0),
    Target("box_labels", "gt_labels", None, "instances", -1),
    Target("masks", "gt_masks", "has_masks", "instances", 0),
    Target("keypoints", "gt_keypoints", "has_keypoints", "instances", 0),
    Target("semantic", "semantic", "has_semantic", "dense", IGNORE_INDEX),
    Target("attributes", "attributes", "has_attributes", "groups", -1),
    Target("labels", "labels", "has_labels", "vector", 0),
    Target("caption_tokens", "caption_tokens", "has_caption", "sequence", 0),
)

Sample = dict[str, Any]
