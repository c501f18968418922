"""Albumentations pipelines, one definition per data kind, applied to image, boxes and masks alike.

Detection-kind pipelines letterbox the image (longest side to ``img_size``, padded at the
bottom/right), so predictions map back to the original image by a single ``scale``.

Pipelines hand out uint8 pixels: a byte image is a quarter of a float one to collate, to pass from a
DataLoader worker and to copy to a GPU. The network normalises them on its device with its own mean and
std (``fourm21.models.backbone.INPUT_CONTRACT``), as YOLO-style trainers divide on the device.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch

from fourm21.data.sample import IGNORE_INDEX


def to_chw(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) array -> (3, H, W) tensor of its dtype (uint8 from the pipelines here)."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def transformed_image(transform: A.Compose | None, image: np.ndarray) -> torch.Tensor:
    """An image-level pipeline (``build_classification_transform``; None: the image as it is) on an (H, W, 3)
    uint8 image -> (3, H, W) tensor."""
    return to_chw(transform(image=image)["image"] if transform is not None else image)


def pipeline_seed() -> int:
    """Seed for an albumentations pipeline: albumentations ignores the global seeds, so it is derived from
    torch's (``seed_everything``; inside a DataLoader worker, the worker's own), making runs repeatable."""
    return int(torch.initial_seed() % 2**32)


def pipelines_in(dataset: object) -> list[A.Compose]:
    """The albumentations pipelines of a data set and of those it wraps (``ConcatDataset``, ``Subset``)."""
    stack, seen, found = [dataset], set(), []
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        stack.extend(getattr(obj, "datasets", []))  # ConcatDataset
        if hasattr(obj, "dataset"):  # Subset, the data module's per-sample seeding
            stack.append(obj.dataset)
        transform = getattr(obj, "transform", None)
        if isinstance(transform, A.Compose):
            found.append(transform)
    return found


def _random_nodes(pipeline: A.Compose) -> list:
    """The pipeline and every transform inside it that draws random numbers."""
    nodes, stack = [], [pipeline]
    while stack:
        node = stack.pop()
        if hasattr(node, "py_random"):
            nodes.append(node)
            stack.extend(getattr(node, "transforms", []))
    return nodes


def seed_pipeline(pipeline: A.Compose, key: Sequence[int]) -> None:
    """Seed ``pipeline`` from ``key`` (e.g. seed, epoch, sample index), each transform from its own stream.

    Albumentations' ``set_random_seed`` hands every transform the same seed, which would make two transforms
    with the same ``p`` fire together on every sample; here each gets a different one (0.1 ms a sample)."""
    nodes = _random_nodes(pipeline)
    for node, seed in zip(nodes, np.random.SeedSequence([int(k) for k in key]).generate_state(len(nodes))):
        node.random_generator = np.random.default_rng(int(seed))
        node.py_random = random.Random(int(seed))


def reseed_worker_transforms(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: each worker re-seeds the pipelines of its copy of the data set, so
    workers neither repeat each other's augmentations nor differ between two runs with the same seed.
    (Training sets are seeded sample by sample on top of this, see ``fourm21.data.datamodule``.)"""
    from lightning.fabric.utilities.seed import pl_worker_init_function

    pl_worker_init_function(worker_id)  # what Lightning does for workers without a worker_init_fn
    info = torch.utils.data.get_worker_info()
    if info is None:
        return
    for k, transform in enumerate(pipelines_in(info.dataset)):
        seed_pipeline(transform, (pipeline_seed(), k))


def build_dense_transform(img_size: int, train: bool, hflip: float = 0.0, scale: Sequence[float] = (1.0, 1.0),
                          translate: float = 0.0, rotate: float = 0.0, affine_p: float = 0.0,
                          color_jitter: float = 0.0) -> A.Compose:
    """Pipeline for images with boxes, instance masks and a semantic mask (COCO-style data); uint8 out.

    Every augmentation is off unless given: the data configs (``data.aug``) hold the values.

    Semantic padding is IGNORE_INDEX so metrics and losses skip the letterbox border.
    """
    ops: list[A.BasicTransform] = [
        A.LongestMaxSize(max_size=img_size, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST),
        A.PadIfNeeded(min_height=img_size, min_width=img_size, position="top_left",
                      border_mode=cv2.BORDER_CONSTANT, fill=114, fill_mask=0),
    ]
    if train:
        if hflip > 0:
            ops.append(A.HorizontalFlip(p=hflip))
        if affine_p > 0:
            ops.append(A.Affine(scale=tuple(scale), translate_percent=(-translate, translate), rotate=(-rotate, rotate),
                                border_mode=cv2.BORDER_CONSTANT, fill=114, fill_mask=0, p=affine_p))
        if color_jitter > 0:
            ops.append(A.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter,
                                     hue=min(0.5, color_jitter / 4), p=0.8))
    # No BboxParams: boxes are the tight boxes of the transformed masks (``apply_dense_transform``), so
    # albumentations' per-op box bookkeeping (half the time of this pipeline at 64 px) would be thrown away.
    return A.Compose(ops, additional_targets=DENSE_TARGETS, keypoint_params=keypoint_params(), seed=pipeline_seed(),
                     save_applied_params=True)


def keypoint_params() -> A.KeypointParams:
    """Keypoints ride through the dense pipelines as points; none is dropped (an object's keypoints stay K long:
    one leaving the image becomes invisible instead, ``apply_dense_transform``)."""
    return A.KeypointParams(format="xy", remove_invisible=False)


def without_letterbox(pipeline: A.Compose) -> A.Compose:
    """``pipeline`` without its leading letterbox ops (``A.LongestMaxSize``, ``A.PadIfNeeded``), for images that
    are already ``img_size`` squares (mosaics): those ops would copy every mask for nothing (0.6 ms an image
    at 320 px). The augmentation ops are the same objects, so seeding ``pipeline`` seeds these too."""
    ops = list(pipeline.transforms)
    while ops and isinstance(ops[0], (A.LongestMaxSize, A.PadIfNeeded)):
        ops.pop(0)
    nodes = _random_nodes(pipeline)
    states = [(node.random_generator, node.py_random) for node in nodes]
    sub = A.Compose(ops, additional_targets=DENSE_TARGETS, keypoint_params=keypoint_params(), save_applied_params=True)
    for node, (generator, py_random) in zip(nodes, states):  # Compose re-seeds what it holds: a sample's own
        node.random_generator, node.py_random = generator, py_random  # seeds (``seed_pipeline``) stay
    return sub


DENSE_TARGETS = {"semantic": "mask", "valid": "mask"}  # masks besides the instances' (``masks``)
MIN_VISIBILITY = 0.2  # an instance keeping less of its (scaled) area in the output is dropped


def _area_scale(out: dict, in_shape: tuple[int, int]) -> float:
    """How much the pipeline's geometry scaled areas: the product of each applied transform's area factor
    (|det| of an affine matrix, scale^2 of a resize), read from ``save_applied_params``; without them the
    letterbox's (longest side ratio)^2."""
    applied = out.get("applied_transforms")
    if applied is None:
        return (max(out["image"].shape[:2]) / max(in_shape)) ** 2
    factor = 1.0
    for _, params in applied:
        if "matrix" in params:
            factor *= abs(float(np.linalg.det(np.asarray(params["matrix"], dtype=np.float64)[:2, :2])))
        elif isinstance(params.get("scale"), float):
            factor *= params["scale"] ** 2
    return factor


def apply_dense_transform(transform: A.Compose, image: np.ndarray, boxes: np.ndarray | None, masks: np.ndarray | None,
                          semantic: np.ndarray | None, valid: np.ndarray | None = None,
                          keypoints: np.ndarray | None = None, flip_idx: Sequence[int] | None = None
                          ) -> dict[str, np.ndarray]:
    """Run ``transform`` on the image, the instance masks and the semantic mask, and derive the boxes.

    ``valid`` (H, W), 1 = a real pixel (default: all): pixels outside it (e.g. the empty parts of a
    mosaic) become IGNORE_INDEX in the semantic target, as the letterbox and affine borders do.

    Boxes come back as the tight boxes of the transformed masks, so a rotation does not inflate them
    (``masks`` None: ``boxes`` are rasterised as masks first; with masks, ``boxes`` is not read). An
    instance that keeps less than MIN_VISIBILITY of its area, scaled by the pipeline's geometry
    (``_area_scale``), is dropped.

    ``keypoints`` (N, K, 3) [x, y, v] in pixel-edge coordinates (COCO's) follow the geometry; a horizontal flip
    also swaps the left/right points by ``flip_idx`` (keypoint k takes the flipped point ``flip_idx[k]``), and
    a point that leaves the image or lands on padding becomes v = 0 (x = y = 0, as COCO writes unlabelled ones).
    Returns image (H, W, 3) uint8, boxes (N, 4), keep (N,) indices into the input, masks
    (N, H, W) bool or None, semantic (H, W) uint8 or None, keypoints (N, K, 3) float32 or None.
    """
    h, w = image.shape[:2]
    given_masks = masks is not None
    if masks is None:
        masks = np.stack([box_mask(b, h, w) for b in np.asarray(boxes).reshape(-1, 4)]) if len(boxes) else \
            np.zeros((0, h, w), dtype=bool)
    kwargs: dict = {"image": image}
    if len(masks):
        kwargs["masks"] = np.ascontiguousarray(masks).view(np.uint8)  # (N, H, W): comes back stacked
    # "valid" marks real pixels, so letterbox and affine borders become IGNORE_INDEX in the semantic target.
    kwargs["valid"] = np.ones((h, w), dtype=np.uint8) if valid is None else valid.astype(np.uint8, copy=False)
    if semantic is not None:
        kwargs["semantic"] = semantic
    if keypoints is not None:
        # albumentations flips a point to (W - 1 - x), the pixel-index convention; shifted by half a pixel the
        # flip, the affine and the letterbox (a resize of 1 at decode size) all map COCO's edge coordinates exactly
        kwargs["keypoints"] = np.asarray(keypoints, dtype=np.float32).reshape(-1, 3)[:, :2] - 0.5
    out = transform(**kwargs)
    size = out["image"].shape[:2]
    res_masks = np.ascontiguousarray(out["masks"]).view(bool) if len(masks) else np.zeros((0, *size), dtype=bool)
    res_boxes, ok = masks_to_boxes_np(res_masks)
    if len(masks):
        before = np.array([np.count_nonzero(m) for m in masks]) * _area_scale(out, (h, w))  # per mask: ~7x faster
        after = np.array([np.count_nonzero(m) for m in res_masks])  # than count_nonzero with an axis
        ok &= after >= MIN_VISIBILITY * before
    ok &= ((res_boxes[:, 2] - res_boxes[:, 0]) >= 1) & ((res_boxes[:, 3] - res_boxes[:, 1]) >= 1)
    keep = np.flatnonzero(ok).astype(np.int64)
    res_sem = None
    if semantic is not None:
        res_sem = np.array(out["semantic"], dtype=np.uint8)  # class ids and IGNORE_INDEX fit a byte: 8x less to batch
        res_sem[out["valid"] == 0] = IGNORE_INDEX
    res_kpts = None
    if keypoints is not None:
        res_kpts = _moved_keypoints(np.asarray(keypoints, dtype=np.float32), out, flip_idx)[keep]
    return {"image": out["image"], "boxes": res_boxes[keep], "keep": keep,
            "masks": res_masks[keep] if given_masks else None, "semantic": res_sem, "keypoints": res_kpts}


def _moved_keypoints(keypoints: np.ndarray, out: dict, flip_idx: Sequence[int] | None) -> np.ndarray:
    """(N, K, 3) keypoints after the pipeline that made ``out``: moved, left/right swapped when it flipped the
    image an odd number of times, invisible where they fell off the image or onto padding (``out['valid']``)."""
    n, k = keypoints.shape[:2]
    xy = np.asarray(out["keypoints"], dtype=np.float32).reshape(n, k, 2) + 0.5
    vis = keypoints[..., 2].copy()
    flips = sum(name == "HorizontalFlip" for name, _ in out.get("applied_transforms") or ())
    if flips % 2 and flip_idx is not None:
        order = np.asarray(flip_idx, dtype=np.int64)
        xy, vis = xy[:, order], vis[:, order]
    h, w = out["image"].shape[:2]
    x, y = xy[..., 0], xy[..., 1]
    inside = (x >= 0) & (x <= w) & (y >= 0) & (y <= h)  # edge coordinates: the far edge is in the image
    col = np.clip(np.floor(x), 0, w - 1).astype(np.int64)
    row = np.clip(np.floor(y), 0, h - 1).astype(np.int64)
    inside[inside] = out["valid"][row[inside], col[inside]] > 0
    vis = np.where(inside, vis, 0.0)
    xy[vis <= 0] = 0.0
    return np.concatenate([xy, vis[..., None]], -1).astype(np.float32)


def box_mask(box: np.ndarray, h: int, w: int) -> np.ndarray:
    """An xyxy box as an (h, w) bool mask (pixels whose centre lies inside it, as rounding the edges gives)."""
    m = np.zeros((h, w), dtype=bool)
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    m[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
    return m


def masks_to_boxes_np(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) bool -> (N, 4) xyxy tight boxes (pixel edges) and (N,) flags for non-empty masks.

    From the masks' row and column projections: ~50x faster than ``torchvision.ops.masks_to_boxes``
    on full-size masks, and this runs for every training image.
    """
    n, h, w = masks.shape
    rows, cols = masks.any(2), masks.any(1)  # (N, H), (N, W)
    ok = rows.any(1)
    boxes = np.stack([cols.argmax(1), rows.argmax(1), w - cols[:, ::-1].argmax(1), h - rows[:, ::-1].argmax(1)],
                     1).astype(np.float32).reshape(n, 4)
    boxes[~ok] = 0.0
    return boxes, ok


def build_classification_transform(img_size: int, train: bool, hflip: float = 0.0, crop_padding: int = 0,
                                   rotate: float = 0.0, color_jitter: float = 0.0) -> A.Compose:
    """Pipeline for image-level labels only (CIFAR-style): resize, pad-and-crop, flip, rotate, jitter; uint8 out.
    Every augmentation is off unless given (the data configs hold the values)."""
    ops: list[A.BasicTransform] = [A.Resize(img_size, img_size, interpolation=cv2.INTER_LINEAR)]
    if train:
        if crop_padding > 0:
            ops += [A.PadIfNeeded(img_size + 2 * crop_padding, img_size + 2 * crop_padding,
                                  border_mode=cv2.BORDER_REFLECT_101),
                    A.RandomCrop(img_size, img_size)]
        if hflip > 0:
            ops.append(A.HorizontalFlip(p=hflip))
        if rotate > 0:
            ops.append(A.Rotate(limit=rotate, border_mode=cv2.BORDER_REFLECT_101, p=0.5))
        if color_jitter > 0:
            ops.append(A.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter,
                                     hue=min(0.5, color_jitter / 4), p=0.8))
    return A.Compose(ops, seed=pipeline_seed())
