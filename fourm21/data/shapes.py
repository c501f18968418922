"""The embedded "shapes" data set: generated procedurally, stored in COCO format.

Each image has a scene class (its background's palette and texture, for the softmax head) and 1-4
objects (circle, square, triangle) with random colour, size and rotation that may occlude
each other. Instance masks are the *visible* parts (RLE), boxes are their tight boxes, and a
semantic PNG holds the per-pixel class. Each object has five keypoints defined on its visible mask
(``shape_keypoints``), so the pose task trains and tests without a download. Because it is plain COCO,
the default run uses the same pycocotools reading path as real COCO.
"""

from __future__ import annotations

import colorsys
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

SCENES = ("forest", "desert", "ocean", "dusk")
SCENE_HUES = (0.33, 0.08, 0.6, 0.8)
CATEGORIES = ("circle", "square", "triangle")
SPLIT_SEEDS = {"train": 0, "val": 1}
FORMAT_VERSION = 5
# The shapes' keypoints: the visible mask's centroid and its extreme points. A horizontal flip swaps left and
# right (``KEYPOINT_FLIP_IDX``); the cross from the centre to each extreme point is the skeleton (1-based, COCO).
KEYPOINT_NAMES = ("centre", "left", "right", "top", "bottom")
KEYPOINT_FLIP_IDX = (0, 2, 1, 3, 4)
KEYPOINT_SKELETON = ((1, 2), (1, 3), (1, 4), (1, 5))


def _tone(rng: np.random.Generator, hue: float) -> np.ndarray:
    """A dark RGB colour (0-255) near ``hue``, so the bright objects stand out."""
    h = (hue + rng.uniform(-0.06, 0.06)) % 1.0
    return np.array(colorsys.hsv_to_rgb(h, rng.uniform(0.45, 0.9), rng.uniform(0.22, 0.5)), np.float32) * 255


def _background(rng: np.random.Generator, scene: int, size: int) -> np.ndarray:
    """(size, size, 3) uint8 background; each scene has its own palette and texture."""
    hue = SCENE_HUES[scene]
    c1 = _tone(rng, hue)
    c2 = _tone(rng, hue)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if scene == 0:  # forest: mottled
        t = np.kron(rng.random((size // 8 + 1, size // 8 + 1)), np.ones((8, 8)))[:size, :size].astype(np.float32)
    elif scene == 1:  # desert: smooth gradient
        angle = rng.uniform(0, 2 * math.pi)
        proj = xx * math.cos(angle) + yy * math.sin(angle)
        t = (proj - proj.min()) / max(proj.max() - proj.min(), 1e-6)
    elif scene == 2:  # ocean: waves
        period = rng.uniform(12, 20)
        t = (0.5 + 0.5 * np.sin(2 * math.pi * (yy + 3 * np.sin(xx / 7)) / period)).astype(np.float32)
    else:  # dusk: checker
        cell = rng.integers(8, 13)
        t = (((xx // cell) + (yy // cell)) % 2).astype(np.float32)
    img = c1[None, None] * (1 - t[..., None]) + c2[None, None] * t[..., None]
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _shape_mask(rng: np.random.Generator, category: int, size: int, min_obj: int, max_obj: int) -> np.ndarray:
    """(size, size) bool mask of one randomly placed, sized and rotated shape."""
    side = rng.uniform(min_obj, max_obj)
    cx, cy = rng.uniform(side / 2, size - side / 2, 2)
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if category == 0:
        r = side / 2
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    else:
        n = 4 if category == 1 else 3
        r = side / 2 if n == 4 else side / 1.7
        rot = rng.uniform(0, 2 * math.pi)
        if n == 4:
            r *= math.sqrt(2)
        pts = [(cx + r * math.cos(rot + 2 * math.pi * k / n), cy + r * math.sin(rot + 2 * math.pi * k / n))
               for k in range(n)]
        draw.polygon(pts, fill=1)
    return np.asarray(canvas, dtype=bool)


def render_image(rng: np.random.Generator, size: int, max_objects: int, min_obj: int, max_obj: int):
    """Render one image; returns (rgb, scene, [(category, visible_mask)], semantic)."""
    scene = int(rng.integers(len(SCENES)))
    img = _background(rng, scene, size)
    n_obj = int(rng.integers(1, max_objects + 1))
    drawn: list[tuple[int, np.ndarray]] = []
    for _ in range(n_obj):
        cat = int(rng.integers(len(CATEGORIES)))
        mask = _shape_mask(rng, cat, size, min_obj, max_obj)
        colour = rng.integers(140, 256, 3)
        colour[rng.integers(3)] = rng.integers(0, 256)  # vary hue, keep it brighter than the background
        img[mask] = colour
        drawn.append((cat, mask))
    objects = []
    occupied = np.zeros((size, size), dtype=bool)
    for cat, mask in reversed(drawn):  # later shapes are on top: what they cover is not visible
        visible = mask & ~occupied
        occupied |= mask
        if visible.sum() >= max(12, 0.3 * mask.sum()):
            objects.append((cat, visible))
    objects.reverse()
    semantic = np.zeros((size, size), dtype=np.uint8)
    for cat, visible in objects:
        semantic[visible] = cat + 1
    # Pixels of dropped (mostly hidden) objects are ambiguous: neither object nor background.
    semantic[occupied & (semantic == 0)] = 255
    return img, scene, objects, semantic


def shape_keypoints(mask: np.ndarray) -> list[float]:
    """COCO ``keypoints`` ([x, y, v] * 5, pixel-edge coordinates) of a visible mask: the centroid, then the
    middle of its leftmost column's left edge, its rightmost column's right edge, its top row's top edge and
    its bottom row's bottom edge (``KEYPOINT_NAMES``). Extreme points are visible (v = 2); the centroid is
    v = 2 when its pixel is part of the mask, else 1 (labelled but hidden, as an occluded shape's can be)."""
    ys, xs = np.nonzero(mask)
    cx, cy = float(xs.mean()) + 0.5, float(ys.mean()) + 0.5
    inside = bool(mask[min(int(cy), mask.shape[0] - 1), min(int(cx), mask.shape[1] - 1)])
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    points = [(cx, cy, 2 if inside else 1),
              (float(x0), float(ys[xs == x0].mean()) + 0.5, 2),
              (float(x1) + 1.0, float(ys[xs == x1].mean()) + 0.5, 2),
              (float(xs[ys == y0].mean()) + 0.5, float(y0), 2),
              (float(xs[ys == y1].mean()) + 0.5, float(y1) + 1.0, 2)]
    return [round(v, 3) for p in points for v in p]


def _encode(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def generate_split(root: Path, split: str, num_images: int, size: int, seed: int,
                   max_objects: int = 4, min_obj: int = 12, max_obj: int = 28) -> Path:
    """Write ``num_images`` images of one split under ``root`` and return the annotation file."""
    rng = np.random.default_rng(seed)
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "semantic" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        img, scene, objects, semantic = render_image(rng, size, max_objects, min_obj, max_obj)
        name = f"{split}_{i:06d}.png"
        Image.fromarray(img).save(root / "images" / split / name)
        Image.fromarray(semantic).save(root / "semantic" / split / name)
        images.append({"id": i + 1, "file_name": f"{split}/{name}", "width": size, "height": size, "label": scene})
        for cat, visible in objects:
            ys, xs = np.nonzero(visible)
            x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": cat + 1,
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                "area": float(visible.sum()), "segmentation": _encode(visible), "iscrowd": 0,
                "keypoints": shape_keypoints(visible), "num_keypoints": len(KEYPOINT_NAMES),
            })
    coco = {
        "info": {"description": "fourm21 shapes", "version": FORMAT_VERSION, "seed": seed, "size": size},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": n, "supercategory": "shape", "keypoints": list(KEYPOINT_NAMES),
                        "skeleton": [list(e) for e in KEYPOINT_SKELETON], "flip_idx": list(KEYPOINT_FLIP_IDX)}
                       for k, n in enumerate(CATEGORIES)],
        "image_categories": [{"id": k, "name": n} for k, n in enumerate(SCENES)],
    }
    ann_file = root / "annotations" / f"instances_{split}.json"
    tmp = ann_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(coco))
    tmp.replace(ann_file)  # the JSON appears last and atomically: its presence means the split is complete
    return ann_file


def ensure_shapes(root: str | Path, *, num_train: int, num_val: int, size: int, max_objects: int, seed: int = 0,
                  min_obj: int = 12, max_obj: int = 28) -> Path:
    """Generate the data set into ``root`` unless an identical one is already there (its counts, size and
    objects per image come from ``data.generate``)."""
    root = Path(root)
    spec = {"num_train": num_train, "num_val": num_val, "size": size, "seed": seed, "max_objects": max_objects,
            "min_obj": min_obj, "max_obj": max_obj, "version": FORMAT_VERSION}
    spec_file = root / "spec.json"
    done = spec_file.exists() and json.loads(spec_file.read_text()) == spec and all(
        (root / "annotations" / f"instances_{s}.json").exists() for s in SPLIT_SEEDS)
    if done:
        return root
    root.mkdir(parents=True, exist_ok=True)
    counts = {"train": num_train, "val": num_val}
    for split, offset in SPLIT_SEEDS.items():
        # Train and val come from different seeds, so no val image is a copy of a train image.
        generate_split(root, split, counts[split], size, seed * 1000 + offset, max_objects, min_obj, max_obj)
    write_label_csvs(root, seed)
    spec_file.write_text(json.dumps(spec))
    return root


COUNT_WORDS = ("zero", "one", "two", "three", "four", "five", "six")
# Multi-label classes of the shapes set, as in COMP5329 the ids have a gap (4 is never used).
MULTILABEL_CLASSES = {1: "circle", 2: "square", 3: "triangle", 5: "crowded", 6: "overlapping"}


def _overlap(a: list[float], b: list[float]) -> bool:
    return min(a[0] + a[2], b[0] + b[2]) > max(a[0], b[0]) and min(a[1] + a[3], b[1] + b[3]) > max(a[1], b[1])


def write_label_csvs(root: str | Path, seed: int = 0, missing_frac: float = 0.1) -> list[Path]:
    """Image-level label CSVs derived from the COCO files, for the attribute and multi-label heads.

    ``attributes_<split>.csv``: image, scene, main_shape (largest object), count (as a word); about
    ``missing_frac`` of the values are left empty (missing). ``multilabel_<split>.csv``
    (``ImageID,Labels,Caption``): shapes present, ``crowded`` (3+ objects), ``overlapping`` (boxes
    overlap); the caption names the scene, the number of objects and one shape, so it carries
    part of the labels and the image the rest.
    """
    import csv

    root = Path(root)
    written = []
    for split, offset in SPLIT_SEEDS.items():
        rng = np.random.default_rng(seed * 1000 + 100 + offset)
        coco = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
        anns: dict[int, list[dict]] = {}
        for a in coco["annotations"]:
            anns.setdefault(a["image_id"], []).append(a)
        attr_path, ml_path = root / f"attributes_{split}.csv", root / f"multilabel_{split}.csv"
        with attr_path.open("w", newline="") as fa, ml_path.open("w", newline="") as fm:
            wa, wm = csv.writer(fa), csv.writer(fm)
            wa.writerow(["image", "scene", "main_shape", "count"])
            wm.writerow(["ImageID", "Labels", "Caption"])
            for im in coco["images"]:
                objs = anns.get(im["id"], [])
                scene = SCENES[im["label"]]
                main = CATEGORIES[max(objs, key=lambda a: a["area"])["category_id"] - 1] if objs else ""
                values = [scene, main, COUNT_WORDS[min(len(objs), 6)]]
                values = ["" if rng.random() < missing_frac else v for v in values]
                wa.writerow([im["file_name"], *values])
                labels = sorted({a["category_id"] for a in objs})
                if len(objs) >= 3:
                    labels.append(5)
                if any(_overlap(a["bbox"], b["bbox"]) for i, a in enumerate(objs) for b in objs[i + 1:]):
                    labels.append(6)
                named = CATEGORIES[objs[int(rng.integers(len(objs)))]["category_id"] - 1] if objs else "nothing"
                caption = f'{COUNT_WORDS[min(len(objs), 6)]} shapes on a {scene} background, one of them a "{named}"'
                wm.writerow([im["file_name"], " ".join(map(str, labels)), caption])
        written += [attr_path, ml_path]
    return written
