"""LabelMe JSON: one ``.json`` per image (``shapes``, ``imagePath``, ``imageHeight``, ``imageWidth``,
``imageData``), in ``train/``, ``val/``, ``test/`` subfolders or all in one folder (then all ``train``).

Shapes: ``polygon`` and ``circle`` (as a polygon) are masks, ``rectangle`` a box, ``mask`` (LabelMe 5)
a bitmap inside its box; ``line``, ``linestrip`` and ``point`` are no objects and are left out (counted).
Shapes with the same ``label`` and ``group_id`` are one object. The image is ``imagePath`` relative to
the JSON; when that file is missing, the image embedded as ``imageData`` is written instead. The class
names are the labels found, sorted, unless ``names`` gives them.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from fourm21.data.formats.records import (
    ImageRecord,
    Instance,
    Source,
    box_instance,
    box_polygon,
    image_size,
    mask_instance,
    polygon_instance,
)
from fourm21.data.json_file import read_json
from fourm21.errors import BadImageError, ConfigError, DatasetError

SPLITS = ("train", "val", "test")
NOT_OBJECTS = ("line", "linestrip", "point", "points")


def _load(path: Path) -> dict:
    data = read_json(path, "a LabelMe JSON")
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise DatasetError(f"{path}: not a LabelMe file (needs a 'shapes' list)")
    if not isinstance(data.get("imagePath"), str) or not data["imagePath"]:
        raise DatasetError(f"{path}: not a LabelMe file (needs 'imagePath')")
    return data


def _points(shape: dict, path: Path, i: int) -> list[tuple[float, float]]:
    pts = shape.get("points")
    ok = isinstance(pts, list) and all(isinstance(p, list) and len(p) == 2 and
                                       all(isinstance(v, int | float) and math.isfinite(v) for v in p) for p in pts)
    if not ok:
        raise DatasetError(f"{path}: shapes[{i}] ({shape.get('label')!r}): 'points' must be a list of [x, y] numbers")
    return [(float(x), float(y)) for x, y in pts]


def _circle(pts: list[tuple[float, float]], n: int) -> list[float]:
    (cx, cy), (px, py) = pts[:2]
    r = math.hypot(px - cx, py - cy)
    angles = [2 * math.pi * k / n for k in range(n)]
    return [v for a in angles for v in (cx + r * math.cos(a), cy + r * math.sin(a))]


def _bitmap(shape: dict, pts: list[tuple[float, float]], h: int, w: int, path: Path, i: int) -> np.ndarray:
    """A ``mask`` shape: the base64 PNG pasted at its box's top-left corner, as an (h, w) bool mask."""
    try:
        with Image.open(io.BytesIO(base64.b64decode(shape.get("mask") or "", validate=True))) as im:
            part = np.asarray(im.convert("L")) > 0
    except (binascii.Error, OSError, ValueError):
        raise DatasetError(f"{path}: shapes[{i}] ({shape.get('label')!r}): 'mask' is not a base64 PNG") from None
    x0, y0 = (int(min(p[k] for p in pts)) for k in (0, 1))
    full = np.zeros((h, w), dtype=bool)
    ys, xs = slice(max(y0, 0), min(y0 + part.shape[0], h)), slice(max(x0, 0), min(x0 + part.shape[1], w))
    if ys.stop > ys.start and xs.stop > xs.start:  # the part of the bitmap inside the image
        full[ys, xs] = part[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]
    return full


def _object(parts: list, h: int, w: int) -> Instance | None:
    """One object from its shapes' parts: ('box', corners) | ('poly', flat) | ('mask', bitmap); category 0
    (set by the caller). A lone rectangle stays a box; parts with a bitmap become one RLE mask."""
    if len(parts) == 1 and parts[0][0] == "box":
        return box_instance(0, *parts[0][1])
    polys = [p[1] if p[0] == "poly" else box_polygon(box_instance(0, *p[1]).bbox) for p in parts if p[0] != "mask"]
    bitmaps = [p[1] for p in parts if p[0] == "mask"]
    if not bitmaps:
        return polygon_instance(0, polys)
    full = np.logical_or.reduce(bitmaps)
    if polys:
        full |= mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, h, w))).astype(bool)
    return mask_instance(0, full)


def _shapes(data: dict, path: Path, h: int, w: int, circle_points: int, source: Source) -> list[tuple[str, Instance]]:
    """(label, object) per object of one file."""
    groups: dict[tuple, list] = {}
    for i, shape in enumerate(data["shapes"]):
        if not isinstance(shape, dict) or not isinstance(shape.get("label"), str):
            raise DatasetError(f"{path}: shapes[{i}] needs a 'label' string")
        kind = shape.get("shape_type") or "polygon"
        label = shape["label"].strip()
        pts = _points(shape, path, i)
        if kind in NOT_OBJECTS:
            source.notes[f"labelme '{kind}' shapes left out (not objects)"] += 1
            continue
        if kind == "polygon" and len(pts) >= 3:
            part = ("poly", [v for p in pts for v in p])
        elif kind == "rectangle" and len(pts) >= 2:
            part = ("box", (min(p[0] for p in pts), min(p[1] for p in pts), max(p[0] for p in pts),
                            max(p[1] for p in pts)))
        elif kind == "circle" and len(pts) >= 2:
            part = ("poly", _circle(pts, circle_points))
        elif kind == "mask" and len(pts) >= 1:
            part = ("mask", _bitmap(shape, pts, h, w, path, i))
        elif kind in ("polygon", "rectangle", "circle", "mask"):
            source.notes[f"labelme '{kind}' shapes with too few points left out"] += 1
            continue
        else:
            raise DatasetError(f"{path}: shapes[{i}] ({label!r}): unknown shape_type {kind!r}")
        gid = shape.get("group_id")
        groups.setdefault((label, gid) if gid is not None else (label, "shape", i), []).append(part)
    out = []
    for key, parts in groups.items():
        inst = _object(parts, h, w)
        if inst is None:
            source.notes["labelme objects with an empty mask left out"] += 1
        else:
            out.append((key[0], inst))
    return out


def _image(data: dict, path: Path, split_dir: Path) -> tuple[str, Path | None, bytes | None, tuple[int, int]]:
    """(name under the split folder, image file or None, embedded bytes or None, (h, w))."""
    said = data["imagePath"].replace("\\", "/")
    image = (path.parent / said).resolve()
    if not image.is_file() and (path.parent / Path(said).name).is_file():  # a path from another machine
        image = (path.parent / Path(said).name).resolve()
    try:
        name = image.relative_to(split_dir.resolve()).as_posix()
    except ValueError:  # outside the split folder: named after the JSON
        name = path.relative_to(split_dir).with_suffix(image.suffix or ".jpg").as_posix()
    if image.is_file() or not data.get("imageData"):
        try:
            return name, image, None, image_size(image)
        except BadImageError as e:
            raise BadImageError(f"{e} (the image of {path})", path=e.path, reason=e.reason) from None
    try:
        raw = base64.b64decode(data["imageData"], validate=True)
        with Image.open(io.BytesIO(raw)) as im:
            w, h = im.size
            fmt = (im.format or "png").lower()
    except (binascii.Error, OSError, ValueError, TypeError):
        raise BadImageError(f"{path}: {image} not found and 'imageData' is not an image", path=str(path),
                            reason="image missing, imageData unreadable") from None
    if not image.suffix:
        name += f".{'jpg' if fmt == 'jpeg' else fmt}"
    return name, None, raw, (h, w)


def read_labelme(src: Path, names: list[str] | None = None, on_bad_image: str = "error",
                 circle_points: int = 32) -> Source:
    """Read a folder of LabelMe JSON files (recursively), split by ``train/`` ``val/`` ``test/`` subfolders."""
    if not isinstance(circle_points, int) or circle_points < 3:
        raise ConfigError(f"labelme.circle_points: must be an integer >= 3, got {circle_points!r}")
    split_dirs = {s: src / s for s in SPLITS if (src / s).is_dir()} or {"train": src}
    source = Source([], {})
    labelled: dict[str, list[tuple[ImageRecord, list[tuple[str, Instance]]]]] = {}
    first_seen: dict[str, Path] = {}  # label -> the first file that uses it, for messages
    for split, folder in split_dirs.items():
        files = sorted(folder.rglob("*.json"))
        if not files:
            raise DatasetError(f"{folder}: no LabelMe .json files")
        labelled[split] = []
        seen: dict[str, Path] = {}
        for path in files:
            data = _load(path)
            try:
                name, image, raw, (h, w) = _image(data, path, folder)
            except BadImageError as e:
                if on_bad_image != "skip":
                    raise
                source.skipped[e.path or str(path)] = e.reason
                continue
            said = (data.get("imageHeight"), data.get("imageWidth"))
            if all(isinstance(v, int) for v in said) and said != (h, w):
                raise DatasetError(f"{path}: imageHeight x imageWidth is {said[0]}x{said[1]} but the image is "
                                   f"{h}x{w} (EXIF rotation, or a replaced image?)")
            if name in seen:
                raise DatasetError(f"{path}: labels the same image as {seen[name]} ({name})")
            seen[name] = path
            objects = _shapes(data, path, h, w, circle_points, source)
            for label, _ in objects:
                first_seen.setdefault(label, path)
            labelled[split].append((ImageRecord(name, h, w, image, raw), objects))
    names = list(names) if names is not None else sorted(first_seen)
    cat_of = {n: i + 1 for i, n in enumerate(names)}
    unknown = [n for n in first_seen if n not in cat_of]
    if unknown:
        raise DatasetError(f"{first_seen[unknown[0]]}: label {unknown[0]!r} is not in names {names}")
    source.categories = [(i + 1, n) for i, n in enumerate(names)]
    for split, items in labelled.items():
        for record, objects in items:
            for label, inst in objects:
                inst.category_id = cat_of[label]
                record.instances.append(inst)
        source.splits[split] = [r for r, _ in items]
    if not source.categories:
        raise DatasetError(f"{src}: no labelled objects in any LabelMe file")
    return source
