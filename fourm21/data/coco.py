"""COCO-format instance data read with pycocotools, turned into Samples.

Works for real COCO and for the generated shapes set. Category ids are mapped to contiguous
0-based ids (and back when writing results); crowd annotations are left out of training
targets (COCOeval handles them); images without annotations are kept. An image-level class is
read from ``images[i][image_label_key]`` when present, a semantic mask from ``semantic_dir``
when given, otherwise derived from the instance masks. Keypoints (COCO's ``keypoints`` [x, y, v] * K per
annotation, the category's ``keypoints`` names and ``skeleton``) are read when a category names keypoints;
``flip_idx`` (the left/right swap of a horizontal flip) comes from the config, the category (a fourm21
extension) or, failing both, the names (``left_*`` <-> ``right_*``).

The JSON is checked when it is read (``check_coco``): a structural fault (not JSON, a missing
top-level key, duplicate ids, an unknown category, an annotation without ``image_id``) is a
DatasetError naming the file and the entry; a fault of one annotation is repaired or the
annotation dropped, counted in ``CocoDataset.repairs`` and logged once per kind (see ``REPAIRS``).
The repaired annotations are the ground truth COCOeval scores against too.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import re
from collections import Counter, OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from fourm21.data.clock import EpochClock
from fourm21.data.image_tags import ImageTags
from fourm21.data.images import SkipLog, check_policy, read_image, read_image_or_skip
from fourm21.data.json_file import read_json
from fourm21.data.mosaic import MosaicItem, mosaic4
from fourm21.data.sample import IGNORE_INDEX, Sample
from fourm21.data.transforms import apply_dense_transform, box_mask, to_chw, without_letterbox
from fourm21.errors import BadImageError, DatasetError

log = logging.getLogger(__name__)

# What ``check_coco`` does to a faulty annotation: the DROPPED kinds leave it out, the others repair it.
REPAIRS = {
    "missing_image": "annotations whose image_id is not in 'images': dropped",
    "bad_bbox": "annotations whose bbox is not 4 finite numbers: dropped",
    "empty_bbox": "annotations with bbox width or height <= 0: dropped",
    "outside_bbox": "annotations with the bbox entirely outside the image: dropped",
    "empty_crowd": "crowd annotations without a usable region: dropped",
    "clipped_bbox": "bboxes partly outside the image: clipped to it",
    "bad_polygon": "polygon parts with fewer than 3 points: removed",
    "bad_rle": "RLE masks whose size differs from the image or that are malformed: removed",
    "box_as_mask": "non-crowd annotations without a usable mask (empty segmentation): the box is the mask",
    "area": "annotations without a valid area: set to the bbox area",
    "bad_keypoints": "annotations whose keypoints are not 3 finite numbers per keypoint of the category: removed",
}
DROPPED = ("missing_image", "bad_bbox", "empty_bbox", "outside_bbox", "empty_crowd")


def load_coco(ann_file: str | Path) -> tuple[COCO, dict[str, int]]:
    """Read and check a COCO JSON quietly: the index and the repairs made (``{kind: count}``, see REPAIRS)."""
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise DatasetError(f"annotation file not found: {ann_file}")
    data = read_json(ann_file, "a COCO JSON")
    repairs = check_coco(data, ann_file)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    for kind, n in repairs.items():
        log.warning("%s: %d %s", ann_file, n, REPAIRS[kind])
    return coco, repairs


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _finite(values: Any, n: int | None = None) -> bool:
    return (isinstance(values, list) and (n is None or len(values) == n) and
            all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values))


def _entries(data: dict, key: str, ann_file: Path) -> list[dict]:
    entries = data.get(key)
    if key not in data:
        raise DatasetError(f"{ann_file}: missing top-level key '{key}' (a COCO file has 'images', 'annotations' "
                           f"and 'categories')")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise DatasetError(f"{ann_file}: '{key}' must be a list of objects")
    return entries


def _unique_ids(entries: list[dict], key: str, ann_file: Path, required: tuple[str, ...]) -> dict[int, dict]:
    by_id: dict[int, dict] = {}
    for i, e in enumerate(entries):
        for field in required:
            if field not in e:
                raise DatasetError(f"{ann_file}: {key}[{i}] has no '{field}'")
        if not _is_int(e["id"]):
            raise DatasetError(f"{ann_file}: {key}[{i}] has id {e['id']!r}; ids must be integers")
        if e["id"] in by_id:
            raise DatasetError(f"{ann_file}: duplicate {key} id {e['id']} ({key}[{i}]); ids must be unique")
        by_id[e["id"]] = e
    return by_id


def check_coco(data: Any, ann_file: str | Path) -> dict[str, int]:
    """Check a parsed COCO dict in place: raise a DatasetError for what cannot be guessed, repair or drop
    faulty annotations (see REPAIRS). Returns ``{kind: count}`` of the repairs made."""
    ann_file = Path(ann_file)
    if not isinstance(data, dict):
        raise DatasetError(f"{ann_file}: the top level must be a JSON object with 'images', 'annotations' and "
                           f"'categories', got a {type(data).__name__}")
    images = _unique_ids(_entries(data, "images", ann_file), "images", ann_file, ("id", "file_name"))
    annotations = _entries(data, "annotations", ann_file)
    categories = _unique_ids(_entries(data, "categories", ann_file), "categories", ann_file, ("id", "name"))
    if not images:
        raise DatasetError(f"{ann_file}: 'images' is empty")
    for img in images.values():
        h, w = img.get("height"), img.get("width")
        if not (_is_int(h) and _is_int(w) and h > 0 and w > 0):
            raise DatasetError(f"{ann_file}: image {img['id']} ({img['file_name']}) needs positive integer "
                               f"'height' and 'width', got {h!r} and {w!r}")
    _unique_ids(annotations, "annotations", ann_file, ("id", "image_id", "category_id"))
    repairs: Counter[str] = Counter()
    kept = []
    for a in annotations:
        if a["category_id"] not in categories:
            raise DatasetError(f"{ann_file}: annotation {a['id']} has unknown category_id {a['category_id']!r}; "
                               f"the categories are {sorted(categories)}")
        img = images.get(a["image_id"])
        if img is None:
            repairs["missing_image"] += 1
            continue
        kind = _check_annotation(a, img["height"], img["width"])
        if kind in DROPPED:
            repairs[kind] += 1
            continue
        repairs.update(kind)
        n_points = len(categories[a["category_id"]].get("keypoints") or [])
        if "keypoints" in a and not _finite(a["keypoints"], 3 * n_points):
            del a["keypoints"]
            repairs["bad_keypoints"] += 1
        if n_points:  # COCOeval reads both of every annotation of a keypoint category
            a.setdefault("keypoints", [0] * (3 * n_points))
            a["num_keypoints"] = sum(1 for v in a["keypoints"][2::3] if v > 0)
        kept.append(a)
    data["annotations"] = kept
    return dict(repairs)


def _check_annotation(a: dict, h: int, w: int) -> str | list[str]:
    """Repair ``a`` in place for an image of ``h`` x ``w``: the one DROPPED kind that rules it out,
    or the list of repairs made."""
    if not _finite(a.get("bbox"), 4):
        return "bad_bbox"
    x, y, bw, bh = a["bbox"]
    if bw <= 0 or bh <= 0:
        return "empty_bbox"
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + bw, w), min(y + bh, h)
    if x1 <= x0 or y1 <= y0:
        return "outside_bbox"
    done = []
    if (x0, y0, x1, y1) != (x, y, x + bw, y + bh):
        a["bbox"] = [x0, y0, x1 - x0, y1 - y0]
        done.append("clipped_bbox")
    a.setdefault("iscrowd", 0)
    seg = a.get("segmentation")
    if isinstance(seg, list):
        parts = [p for p in seg if _finite(p) and len(p) >= 6 and len(p) % 2 == 0]
        if len(parts) != len(seg):
            done.append("bad_polygon")
        a["segmentation"] = parts
    elif isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if list(size or []) != [h, w] or not isinstance(counts, str | list) or not counts:
            done.append("bad_rle")
            a["segmentation"] = []
    elif seg is not None:
        done.append("bad_rle")
        a["segmentation"] = []
    if not a.get("segmentation"):
        if a["iscrowd"]:
            return "empty_crowd"
        bx, by, bw_, bh_ = a["bbox"]  # the box as a polygon: the training target and COCOeval's 'segm' ground truth
        a["segmentation"] = [[bx, by, bx + bw_, by, bx + bw_, by + bh_, bx, by + bh_]]
        done.append("box_as_mask")
    if not (_finite([a.get("area")]) and a["area"] > 0):
        a["area"] = float(a["bbox"][2] * a["bbox"][3])
        done.append("area")
    return done


def keypoint_spec(coco: COCO, ann_file: Path, flip_idx: list[int] | None = None
                  ) -> tuple[list[str], list[list[int]], list[int]]:
    """The keypoint names, skeleton (1-based pairs, COCO's) and flip_idx of a COCO file's categories; three
    empty lists when no category names keypoints. ``flip_idx`` (the config's) wins over the category's, which
    wins over the one the names give (``flip_from_names``)."""
    cats = [c for c in coco.loadCats(sorted(coco.cats)) if c.get("keypoints")]
    if not cats:
        return [], [], []
    names = [str(n) for n in cats[0]["keypoints"]]
    for c in cats[1:]:
        if len(c["keypoints"]) != len(names):
            raise DatasetError(f"{ann_file}: category {c['id']} has {len(c['keypoints'])} keypoints but category "
                               f"{cats[0]['id']} has {len(names)}; one keypoint set per data set")
    skeleton = [[int(a), int(b)] for a, b in cats[0].get("skeleton") or []]
    given, where = (flip_idx, "data.flip_idx") if flip_idx is not None else (cats[0].get("flip_idx"), ann_file)
    if given is None:
        return names, skeleton, flip_from_names(names)
    given = [int(i) for i in given]
    if sorted(given) != list(range(len(names))):
        raise DatasetError(f"{where}: flip_idx {given} is not a permutation of the {len(names)} keypoints")
    return names, skeleton, given


_SIDES = {"left": "right", "right": "left", "Left": "Right", "Right": "Left"}


def flip_from_names(names: list[str]) -> list[int]:
    """The left/right swap the keypoint names spell (``left_eye`` <-> ``right_eye``, ``left`` <-> ``right``);
    a name without a partner stays where it is."""
    def swapped(name: str) -> str:
        return re.sub(r"left|right|Left|Right", lambda m: _SIDES[m.group(0)], name)
    index = {n: i for i, n in enumerate(names)}
    return [index.get(swapped(n), i) for i, n in enumerate(names)]


class CocoDataset(Dataset):
    """Samples with boxes, instance masks, semantic mask and (optionally) an image label.

    ``on_bad_image``: ``error`` raises a BadImageError naming the file; ``skip`` returns None for that
    index (``collate_samples`` leaves it out) and records it in ``skip_log``.

    ``mosaic``: probability that a sample is a mosaic of its image and three others drawn at random
    (``fourm21.data.mosaic``; ``mosaic_size``: its side, by default the pipeline's letterbox size),
    then run through ``transform`` like any image; a mosaic sample has no image-level ``label``.
    ``close_mosaic``: no mosaic in the last N epochs. Whether a sample is a mosaic, and of which
    images, is a function of (seed, epoch, index) read from ``clock`` (``EpochClock``; the data module
    attaches its own and sets it when each training pass starts), so it is repeatable and resumable.
    ``mosaic_buffer`` N > 0: the three others are drawn from the last N images this process (or
    DataLoader worker) decoded, held in RAM, as YOLOv5/v8 do, instead of decoded from disk: about 2x
    faster per mosaic without ``cache``, still repeatable for a seed and worker count, but the partners
    then depend on the order images came in (a run resumed mid-epoch draws others).
    """

    def __init__(self, img_dir: str | Path, ann_file: str | Path, transform: Any = None,
                 semantic_dir: str | Path | None = None, image_label_key: str | None = "label",
                 cache: bool = False, source: str = "coco", limit: int | None = None,
                 on_bad_image: str = "error", mask_stride: int = 1, mosaic: float = 0.0, close_mosaic: int = 0,
                 mosaic_size: int | None = None, mosaic_buffer: int = 0, flip_idx: list[int] | None = None,
                 image_labels: str | Path | None = None, image_col: str = "file_name",
                 image_class_col: str | None = None, groups: list[str] | None = None,
                 image_label_classes: dict[str, list[str]] | None = None,
                 semantic_values: dict[int, int | str] | None = None) -> None:
        self.img_dir = Path(img_dir)
        self.ann_file = Path(ann_file)
        self.semantic_dir = Path(semantic_dir) if semantic_dir else None
        self.transform = transform
        self.source = source
        self.on_bad_image = check_policy(on_bad_image)
        if not isinstance(mask_stride, int) or mask_stride < 1:
            raise DatasetError(f"{self.ann_file}: mask_stride must be an integer >= 1, got {mask_stride!r}")
        self.mask_stride = mask_stride
        if not 0.0 <= float(mosaic) <= 1.0:
            raise DatasetError(f"{self.ann_file}: mosaic is a probability in [0, 1], got {mosaic!r}")
        if int(close_mosaic) < 0:
            raise DatasetError(f"{self.ann_file}: close_mosaic must be >= 0 epochs, got {close_mosaic!r}")
        self.mosaic = float(mosaic)
        self.close_mosaic = int(close_mosaic)
        self.mosaic_size = int(mosaic_size) if mosaic_size else _letterbox_size(transform)
        if not isinstance(mosaic_buffer, int) or mosaic_buffer < 0:
            raise DatasetError(f"{self.ann_file}: mosaic_buffer must be an integer >= 0 images, got {mosaic_buffer!r}")
        self.mosaic_buffer = mosaic_buffer
        self._mosaic_transform: tuple | None = None  # (transform, it less its letterbox ops): a mosaic is square
        self._recent: OrderedDict[int, tuple] = OrderedDict()  # image id -> raw, the last mosaic_buffer decoded
        if self.mosaic > 0 and not self.mosaic_size:
            raise DatasetError(f"{self.ann_file}: mosaic needs mosaic_size (the pipeline has no LongestMaxSize)")
        self.clock = EpochClock()
        self.skip_log = SkipLog(source, f"{self.img_dir.resolve()}|{self.ann_file.resolve()}")
        self.coco, self.repairs = load_coco(self.ann_file)
        self.ids = sorted(self.coco.imgs)
        if limit is not None:  # the first ``limit`` images only: a labelled subset for semi-supervised runs
            if int(limit) < 1:
                raise DatasetError(f"{self.ann_file}: limit must be >= 1, got {limit}")
            self.ids = self.ids[: int(limit)]
        cats = sorted(self.coco.cats)
        self.cat_ids: list[int] = cats  # contiguous index -> original COCO id
        self.cat_to_index = {c: i for i, c in enumerate(cats)}
        self.class_names = [self.coco.cats[c]["name"] for c in cats]
        image_cats = self.coco.dataset.get("image_categories")
        self.image_class_names = [c["name"] for c in sorted(image_cats, key=lambda c: c["id"])] if image_cats else []
        self.image_label_key = image_label_key if self.image_class_names else None
        self.attribute_classes: dict[str, list[str]] = {}
        self._tags: dict[str, tuple[int, dict[str, int]]] = {}
        if image_labels:  # the CSV beside the folder: its class column wins over the JSON's image_categories
            tags = ImageTags(image_labels, image_col, image_class_col, groups, image_label_classes)
            self._tags = tags.match([self.coco.imgs[i]["file_name"] for i in self.ids], str(self.ann_file))
            self.tags_unmatched = tags.unmatched
            if tags.class_col:
                self.image_class_names, self.image_label_key = tags.class_names, None
            self.attribute_classes = tags.attribute_classes
        self._semantic_lut = semantic_lut(semantic_values, self.semantic_dir)
        self.keypoint_names, self.skeleton, self.flip_idx = keypoint_spec(
            self.coco, self.ann_file, list(flip_idx) if flip_idx is not None else None)
        self._cache: dict[int, tuple] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.ids)

    def _load_raw(self, image_id: int) -> tuple | None:
        """Decoded image (h, w, 3) uint8, boxes (N, 4) xyxy, labels (N,), masks (N, h, w), semantic (h, w) and the
        original (H, W); None for a bad image under ``on_bad_image=skip``.

        When the pipeline starts by shrinking the image to a letterbox side (``A.LongestMaxSize``), everything
        is decoded at that size (``decode_size``): polygons are rasterised once, at the size training uses,
        instead of as full-resolution masks that the pipeline then resizes one by one.
        """
        if self._cache is not None and image_id in self._cache:
            return self._remember(image_id, self._cache[image_id])
        if image_id in self._recent:  # still in the mosaic buffer: decoded already (as YOLO's buffer serves it)
            return self._remember(image_id, self._recent[image_id])
        info = self.coco.imgs[image_id]
        path = self.img_dir / info["file_name"]
        h, w = info["height"], info["width"]
        size = decode_size(self.transform, h, w)
        image = self._read(path, info, size)
        if image is None:
            return None
        try:
            if image.shape[:2] != size:  # as A.LongestMaxSize resizes the image, so the pipeline leaves it as it is
                image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
            scale = np.array([size[1] / w, size[0] / h] * 2, dtype=np.float32)
            anns = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
            boxes = np.asarray([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                                 a["bbox"][1] + a["bbox"][3]] for a in anns], dtype=np.float32).reshape(-1, 4) * scale
            labels_np = np.asarray([self.cat_to_index[a["category_id"]] for a in anns], dtype=np.int64)
            masks = [self._ann_mask(a, (h, w), size) if a.get("segmentation") else box_mask(box, *size)
                     for a, box in zip(anns, boxes.tolist())]
            masks_np = np.stack(masks) if masks else np.zeros((0, *size), dtype=bool)
            semantic = self._semantic(info, masks_np, labels_np, image_id, h, w, size)
            keypoints = self._keypoints(anns, scale[:2]) if self.keypoint_names else None
        except BadImageError as e:
            if self.on_bad_image != "skip":
                raise
            self.skip_log.add(e.path or path, e.reason)
            return None
        raw = (image, boxes, labels_np, masks_np, semantic, (h, w), keypoints)
        if self._cache is not None:
            self._cache[image_id] = raw
        return self._remember(image_id, raw)

    def _keypoints(self, anns: list[dict], scale: np.ndarray) -> np.ndarray:
        """(N, K, 3) [x, y, v] of ``anns`` at the decode size (``scale``: x and y factors); an annotation without
        keypoints has none visible."""
        k = len(self.keypoint_names)
        out = np.zeros((len(anns), k, 3), dtype=np.float32)
        for i, a in enumerate(anns):
            if "keypoints" in a:
                out[i] = np.asarray(a["keypoints"], dtype=np.float32).reshape(k, 3)
        out[..., 2] = np.clip(out[..., 2], 0, 2)
        out[..., :2] *= scale
        out[out[..., 2] <= 0, :2] = 0.0
        return out

    def _remember(self, image_id: int, raw: tuple) -> tuple:
        """Keep ``raw`` among the last ``mosaic_buffer`` images (while mosaic can still be drawn)."""
        if self.mosaic_buffer and self.mosaic > 0:
            self._recent[image_id] = raw
            self._recent.move_to_end(image_id)
            while len(self._recent) > self.mosaic_buffer:
                self._recent.popitem(last=False)
        return raw

    def _read(self, path: Path, info: dict, size: tuple[int, int]) -> np.ndarray | None:
        """The image of ``info``, JPEGs decoded reduced towards ``size`` (``read_image``'s ``min_size``); a
        BadImageError when its size is not the annotation file's (None, recorded, under ``skip``)."""
        h, w = info["height"], info["width"]
        jpeg = size != (h, w) and path.suffix.lower() in (".jpg", ".jpeg")
        image = read_image_or_skip(path, self.on_bad_image, self.skip_log, min_size=size if jpeg else None)
        if image is None or _decoded_at(image.shape[:2], h, w, jpeg):
            return image
        if jpeg:  # reduced to an unexpected size: its whole size, for the message
            image = read_image(path)
        ih, iw = image.shape[:2]
        reason = f"size {iw}x{ih} differs from the annotation file's {w}x{h}"
        error = BadImageError(f"{path}: the image is {iw}x{ih} but {self.ann_file} says {w}x{h} (EXIF rotation, "
                              f"or a replaced file?)", path=str(path), reason=reason)
        if self.on_bad_image != "skip":
            raise error
        self.skip_log.add(path, reason)
        return None

    def _ann_mask(self, ann: dict, orig: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
        """One annotation's mask at ``size``: polygons scaled and rasterised there, RLE decoded and resized
        (nearest, as the pipeline resizes masks)."""
        if orig == size:
            return self.coco.annToMask(ann).astype(bool)
        seg = ann["segmentation"]
        if isinstance(seg, list):
            sx, sy = size[1] / orig[1], size[0] / orig[0]
            polys = [[v * (sx if i % 2 == 0 else sy) for i, v in enumerate(p)] for p in seg]
            rle = mask_utils.merge(mask_utils.frPyObjects(polys, size[0], size[1]))
            return mask_utils.decode(rle).astype(bool)
        return _resize_nearest(self.coco.annToMask(ann), size).astype(bool)

    def _semantic(self, info: dict, masks: np.ndarray, labels: np.ndarray, image_id: int, h: int, w: int,
                  size: tuple[int, int]) -> np.ndarray:
        """(size) uint8 semantic labels: the image's PNG (``semantic_dir``, checked against (h, w)) or painted from
        ``masks``; crowd regions are IGNORE_INDEX."""
        if self.semantic_dir is not None:
            path = (self.semantic_dir / info["file_name"]).with_suffix(".png")
            try:
                with Image.open(path) as im:
                    sem = np.asarray(im, dtype=np.uint8).copy()
            except OSError as e:
                raise BadImageError(f"cannot read semantic mask {path}: {e}", path=str(path),
                                    reason=f"semantic mask unreadable: {str(e).splitlines()[0]}") from None
            if sem.shape != (h, w):
                raise BadImageError(f"semantic mask {path} is {sem.shape} but its image is ({h}, {w})", path=str(path),
                                    reason=f"semantic mask of shape {sem.shape}, image ({h}, {w})")
            sem = _resize_nearest(sem, size)
            return sem if self._semantic_lut is None else self._mapped(sem, path, masks, labels)
        return self._painted(masks, labels, image_id, size)

    def _mapped(self, sem: np.ndarray, path: Path, masks: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """A PNG's values through ``semantic_values``; ``object`` pixels take the class of the instance painted
        there, else the image's largest instance's (trimaps run a little past the polygons); no instance: ignore."""
        lut = self._semantic_lut
        unknown = np.unique(sem[lut[sem] == UNMAPPED])
        if len(unknown):
            raise DatasetError(f"semantic mask {path}: value(s) {unknown.tolist()} not in data.semantic_values "
                               f"{sorted(int(v) for v in np.flatnonzero(lut != UNMAPPED))}")
        out = lut[sem]
        objects = out == OBJECT
        if objects.any():
            painted = _paint(masks, labels, sem.shape)
            fallback = labels[int(np.argmax(masks.reshape(len(masks), -1).sum(1)))] + 1 if len(masks) else IGNORE_INDEX
            out[objects] = np.where(painted[objects] > 0, painted[objects], fallback)
        return out.astype(np.uint8)

    def _painted(self, masks: np.ndarray, labels: np.ndarray, image_id: int, size: tuple[int, int]) -> np.ndarray:
        """The semantic map the instance masks paint (crowd regions ignored)."""
        sem = _paint(masks, labels, size)
        for a in self.coco.imgToAnns.get(image_id, []):
            if a.get("iscrowd", 0):
                sem[_resize_nearest(self.coco.annToMask(a), size).astype(bool)] = IGNORE_INDEX
        return sem

    def attach_clock(self, clock: EpochClock) -> None:
        """Read seed and epoch from ``clock`` (shared with the DataLoader workers; see ``fourm21.data.clock``)."""
        self.clock = clock

    def mosaic_active(self) -> bool:
        """Mosaic is on (p > 0) and the clock is not within the last ``close_mosaic`` epochs."""
        if self.mosaic <= 0:
            return False
        left = self.clock.epochs_left()
        return left is None or left > self.close_mosaic

    def _mosaic_rng(self, index: int) -> np.random.Generator | None:
        """The mosaic's own generator for this (seed, epoch, index), or None when this sample is no mosaic."""
        if not self.mosaic_active():
            return None
        rng = np.random.default_rng([self.clock.seed, self.clock.epoch, int(index), 0x6D6F73])
        return rng if rng.random() < self.mosaic else None

    def __getitem__(self, index: int) -> Sample | None:
        image_id = self.ids[index]
        raw = self._load_raw(image_id)
        if raw is None:
            return None
        rng = self._mosaic_rng(index)
        if rng is not None:
            return self._mosaic_sample(index, raw, rng)
        image, boxes, labels, masks, semantic, (h, w), keypoints = raw
        out = apply_dense_transform(self.transform, image, boxes, masks, semantic, keypoints=keypoints,
                                    flip_idx=self.flip_idx)
        sample = self._sample(out, labels, image_id, (h, w), max(out["image"].shape[:2]) / max(h, w))
        if self.image_label_key is not None:
            label = self.coco.imgs[image_id].get(self.image_label_key)
            if label is not None:
                sample["label"] = int(label)
        tags = self._tags.get(self.coco.imgs[image_id]["file_name"])
        if tags is not None:
            label, attributes = tags
            if label >= 0:
                sample["label"] = label
            if attributes:
                sample["attributes"] = dict(attributes)
        return sample

    def _mosaic_sample(self, index: int, raw: tuple, rng: np.random.Generator) -> Sample:
        """The image at ``index`` and three others (drawn by ``rng``) as one mosaic; no image-level label."""
        if self.mosaic_buffer and len(self._recent) >= 4:
            recent = list(self._recent)
            others = [recent[j] for j in rng.integers(len(recent), size=3).tolist()]
            raws = [raw] + [self._recent[i] for i in others]
        else:
            others = [self.ids[j] for j in rng.integers(len(self.ids), size=3).tolist()]
            raws = [raw] + [self._load_raw(i) or raw for i in others]  # a skipped image: the primary again
        items = [MosaicItem(r[0], r[3], r[2], r[4], r[6]) for r in raws]
        mos = mosaic4(items, self.mosaic_size, rng)
        if self._mosaic_transform is None or self._mosaic_transform[0] is not self.transform:  # on first use
            self._mosaic_transform = (self.transform, without_letterbox(self.transform))
        out = apply_dense_transform(self._mosaic_transform[1], mos.image, None, mos.masks, mos.semantic,
                                    valid=mos.valid, keypoints=mos.keypoints, flip_idx=self.flip_idx)
        image_id = self.ids[index]
        sample = self._sample(out, mos.labels, image_id, mos.image.shape[:2], 1.0)
        sample["meta"]["mosaic"] = [image_id, *others]
        return sample

    def _sample(self, out: dict, labels: np.ndarray, image_id: int, orig_size: tuple[int, int],
                scale: float) -> Sample:
        size = out["image"].shape[:2]
        sample: Sample = {
            "image": to_chw(out["image"]),
            "boxes": torch.from_numpy(out["boxes"]).float(),
            "box_labels": torch.from_numpy(labels[out["keep"]]).long(),
            "masks": mask_coverage(out["masks"] if out["masks"] is not None else np.zeros((0, *size), dtype=bool),
                                   self.mask_stride),
            "semantic": torch.from_numpy(out["semantic"]),
            "meta": {"image_id": image_id, "source": self.source, "orig_size": tuple(orig_size),
                     "scale": scale, "file_name": self.coco.imgs[image_id]["file_name"]},
        }
        if out.get("keypoints") is not None:
            sample["keypoints"] = torch.from_numpy(out["keypoints"])
        return sample


def _paint(masks: np.ndarray, labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(size) uint8: class + 1 where an instance mask lies, 0 elsewhere."""
    sem = np.zeros(size, dtype=np.uint8)
    order = np.argsort([-m.sum() for m in masks]) if len(masks) else []
    for i in order:  # small objects painted last, so they stay visible where they overlap big ones
        sem[masks[i]] = labels[i] + 1
    return sem


UNMAPPED, OBJECT = 256, 257  # look-up-table codes: a value the map lacks; a pixel of the object there


def semantic_lut(values: Mapping[Any, Any] | None, semantic_dir: Path | None) -> np.ndarray | None:
    """``data.semantic_values`` ({PNG value: class}) as a 256-entry table: a class id (0 background, k the
    k-th object class, 255 ignore) or ``object`` (the class of the object there: a foreground/background
    map such as a pet trimap beside per-object classes); None when there is no map."""
    if not values:
        return None
    if semantic_dir is None:
        raise DatasetError("data.semantic_values is set but there is no semantic_dir (data.semantic_dir) to map")
    lut = np.full(256, UNMAPPED, dtype=np.int32)
    for raw, target in values.items():
        key = f"data.semantic_values.{raw}"
        if not (isinstance(raw, int) or str(raw).isdigit()) or not 0 <= int(raw) <= 255:
            raise DatasetError(f"{key}: the keys are PNG values 0..255, got {raw!r}")
        if target == "object":
            lut[int(raw)] = OBJECT
        elif isinstance(target, int) and not isinstance(target, bool) and 0 <= target <= 255:
            lut[int(raw)] = target
        else:
            raise DatasetError(f"{key}: a class id 0..255 (0 background, 255 ignore) or 'object', got {target!r}")
    return lut


def mask_coverage(masks: torch.Tensor | np.ndarray, stride: int) -> torch.Tensor:
    """(N, H, W) bool -> (N, ceil(H/s), ceil(W/s)) float: the fraction of each s x s cell an instance covers.

    Instance-mask targets at the prototype resolution, made once per image in the data pipeline:
    a batch then carries (B, M, H/s, W/s) instead of (B, M, H, W) and the loss resizes nothing.
    ``stride`` 1 keeps the bool masks. NumPy input (the data pipeline) is averaged by OpenCV on 0/255
    bytes, about 4x faster than on floats (coverage in steps of 1/255, within 0.5/255 of exact);
    tensors (e.g. pseudo-labels on a GPU) stay on their device and are exact.
    """
    n, h, w = masks.shape
    if stride == 1:
        return torch.from_numpy(masks) if isinstance(masks, np.ndarray) else masks
    gh, gw = -(-h // stride), -(-w // stride)
    if isinstance(masks, torch.Tensor):
        padded = torch.nn.functional.pad(masks.float(), (0, gw * stride - w, 0, gh * stride - h))
        return padded.view(n, gh, stride, gw, stride).mean((2, 4))
    out = np.empty((n, gh, gw), dtype=np.uint8)
    for i, m in enumerate(masks.view(np.uint8)):  # mask by mask: no (H, W, N) transpose to pay for
        cell = m * np.uint8(255)
        if (gh * stride, gw * stride) != (h, w):
            cell = cv2.copyMakeBorder(cell, 0, gh * stride - h, 0, gw * stride - w, cv2.BORDER_CONSTANT, value=0)
        out[i] = cv2.resize(cell, (gw, gh), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(out).float().div_(255.0)


def _letterbox_size(transform: Any) -> int | None:
    """The ``max_size`` of the first ``A.LongestMaxSize`` in an albumentations pipeline (the letterbox side)."""
    for t in getattr(transform, "transforms", []):
        if isinstance(t, A.LongestMaxSize):
            size = t.max_size
            return int(size if isinstance(size, int) else max(size))
    return None


def decode_size(transform: Any, h: int, w: int) -> tuple[int, int]:
    """The (h, w) a pipeline starting with ``A.LongestMaxSize`` shrinks an (h, w) image to, with its rounding;
    (h, w) itself when the pipeline does not start by shrinking it."""
    ops = getattr(transform, "transforms", None) or []
    first = ops[0] if len(ops) else None
    if not isinstance(first, A.LongestMaxSize) or not isinstance(first.max_size, int):
        return h, w
    scale = first.max_size / max(h, w)
    if scale >= 1.0:
        return h, w
    return max(1, round(h * scale)), max(1, round(w * scale))


def _decoded_at(shape: tuple[int, int], h: int, w: int, reduced: bool) -> bool:
    """An image decoded as ``shape`` is an (h, w) image: whole, or (``reduced``, ``read_image``'s ``min_size``)
    JPEG-reduced by 2, 4 or 8."""
    return any(tuple(shape) == (-(-h // k), -(-w // k)) for k in ((1, 2, 4, 8) if reduced else (1,)))


def _resize_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if mask.shape[:2] == tuple(size):
        return mask
    return cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
