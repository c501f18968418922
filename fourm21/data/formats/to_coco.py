"""Write a ``Source`` as the official COCO layout that ``configs/data/coco.yaml`` reads:

    <out>/train2017/  <out>/val2017/  (<out>/test2017/)     the images (linked or copied)
    <out>/annotations/instances_<split>2017.json            COCO instances JSON (+ keypoints: YOLO pose)
    <out>/semantic_<split>2017/<stem>.png                   class maps, when every image of a split has one (VOC)
    <out>/.fourm21_convert.json                             what was converted, from where, with which options

Converting once keeps ``fourm21.data.coco.CocoDataset`` (and its checks) the one detection loader. Each
written JSON is run through ``check_coco``, so the repairs training will make are reported now.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fourm21.data.coco import check_coco
from fourm21.data.formats.labelme import read_labelme
from fourm21.data.formats.records import ImageRecord, Source, area
from fourm21.data.formats.voc import read_voc
from fourm21.data.formats.yolo import read_yolo
from fourm21.data.images import check_policy
from fourm21.errors import ConfigError, DatasetError

READERS: dict[str, Callable[..., Source]] = {"yolo": read_yolo, "voc": read_voc, "labelme": read_labelme}
IMAGE_MODES = ("symlink", "hardlink", "copy")
STAMP = ".fourm21_convert.json"


def split_dir(split: str) -> str:
    """``train`` -> ``train2017``: the folder names configs/data/coco.yaml points at."""
    return f"{split}2017"


def hold_out(source: Source, val_fraction: float, seed: int) -> None:
    """A source with only ``train``: a seeded ``val_fraction`` of its images becomes ``val`` (at least one)."""
    if set(source.splits) != {"train"} or val_fraction <= 0:
        return
    train = source.splits["train"]
    if len(train) < 2:
        raise DatasetError(f"val_fraction: {len(train)} image(s) found, too few to hold some out as val "
                           f"(val_fraction=0 keeps them all in train)")
    n_val = min(len(train) - 1, max(1, round(val_fraction * len(train))))
    held = set(np.random.default_rng(seed).permutation(len(train))[:n_val].tolist())
    source.splits = {"train": [r for i, r in enumerate(train) if i not in held],
                     "val": [r for i, r in enumerate(train) if i in held]}


def prepare_out(out: Path, overwrite: bool) -> None:
    """Make ``out`` ready: new or empty, or an earlier conversion (replaced with ``overwrite``, or when it was
    cut short). The stamp is written first, marked incomplete until the conversion ends."""
    if out.exists() and not out.is_dir():
        raise DatasetError(f"out: {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        if not (out / STAMP).is_file():
            raise DatasetError(f"out: {out} is not empty and not a fourm21-convert output; choose a new folder")
        try:
            complete = json.loads((out / STAMP).read_text(encoding="utf-8")).get("complete", False)
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            complete = False
        if complete and not overwrite:
            raise DatasetError(f"out: {out} holds an earlier conversion; give overwrite=true to replace it")
        for p in out.iterdir():  # only what a conversion writes
            if p.name == STAMP or p.name == "annotations" or p.name.endswith("2017"):
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    (out / STAMP).write_text(json.dumps({"complete": False}), encoding="utf-8")


def _check_unique(records: list[ImageRecord], split: str) -> None:
    seen: dict[str, Path | None] = {}
    for r in records:
        if r.file_name in seen:
            raise DatasetError(f"{r.source or r.file_name}: listed twice in split {split!r} (as {r.file_name})")
        seen[r.file_name] = r.source


def _place(record: ImageRecord, dest: Path, mode: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if record.data is not None:
        dest.write_bytes(record.data)
    elif mode == "symlink":
        os.symlink(record.source.resolve(), dest)
    elif mode == "hardlink":
        try:
            os.link(record.source, dest)
        except OSError as e:  # another file system, or links not allowed: a copy
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            shutil.copy2(record.source, dest)
    else:
        shutil.copy2(record.source, dest)


def _write_semantic(records: list[ImageRecord], folder: Path, lut: np.ndarray) -> None:
    for r in records:
        with Image.open(r.semantic) as im:
            index = np.asarray(im)
        if index.shape != (r.height, r.width):
            raise DatasetError(f"{r.semantic}: is {index.shape[1]}x{index.shape[0]} but its image is "
                               f"{r.width}x{r.height}")
        dest = (folder / r.file_name).with_suffix(".png")
        dest.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(lut[index]).save(dest)


def coco_dict(source: Source, records: list[ImageRecord], description: str) -> dict:
    """The COCO instances dict of one split (image and annotation ids from 1, in record order)."""
    images, annotations = [], []
    for image_id, r in enumerate(records, 1):
        images.append({"id": image_id, "file_name": r.file_name, "height": r.height, "width": r.width})
        for inst in r.instances:
            ann = {"id": len(annotations) + 1, "image_id": image_id, "category_id": inst.category_id,
                   "bbox": [round(float(v), 2) for v in inst.bbox], "area": round(area(inst, r.height, r.width), 2),
                   "iscrowd": inst.iscrowd, "segmentation": []}
            if isinstance(inst.segmentation, dict):
                ann["segmentation"] = inst.segmentation
            elif inst.segmentation:
                ann["segmentation"] = [[round(float(v), 2) for v in p] for p in inst.segmentation]
            if inst.keypoints is not None:  # COCO keypoints: [x, y, v] * K in pixels, v an int
                ann["keypoints"] = [int(v) if i % 3 == 2 else round(float(v), 2)
                                    for i, v in enumerate(inst.keypoints)]
                ann["num_keypoints"] = sum(1 for v in inst.keypoints[2::3] if v > 0)
            annotations.append(ann)
    categories = [{"id": i, "name": n, "supercategory": "", **source.category_fields.get(i, {})}
                  for i, n in source.categories]
    return {"info": {"description": description}, "licenses": [], "images": images, "annotations": annotations,
            "categories": categories}


def convert(fmt: str, src: str | Path, out: str | Path, *, images: str = "symlink", overwrite: bool = False,
            names: list[str] | None = None, val_fraction: float = 0.1, seed: int = 0, on_bad_image: str = "error",
            **options: Any) -> dict:
    """Convert the ``fmt`` data at ``src`` into the COCO layout at ``out``; returns the summary (also in the stamp).

    ``options`` go to the reader (``voc``: image_sets, difficult; ``labelme``: circle_points)."""
    if fmt not in READERS:
        raise ConfigError(f"format: {fmt!r} is not one of {list(READERS)}")
    if images not in IMAGE_MODES:
        raise ConfigError(f"images: must be one of {list(IMAGE_MODES)}, got {images!r}")
    if not 0 <= float(val_fraction) < 1:
        raise ConfigError(f"val_fraction: must be in [0, 1), got {val_fraction!r}")
    check_policy(on_bad_image, "on_bad_image")
    src, out = Path(src).expanduser(), Path(out).expanduser()
    if not src.exists():
        raise DatasetError(f"src: {src} not found")
    if src.is_dir() and out.resolve().is_relative_to(src.resolve()):
        raise DatasetError(f"out: {out} is inside src {src}; write the conversion outside the data it reads")
    source = READERS[fmt](src, names=list(names) if names is not None else None, on_bad_image=on_bad_image,
                          **options)
    hold_out(source, float(val_fraction), int(seed))
    for split, records in source.splits.items():
        _check_unique(records, split)
    prepare_out(out, overwrite)
    summary: dict[str, Any] = {"format": fmt, "src": str(src.resolve()), "out": str(out.resolve()),
                               "categories": [n for _, n in source.categories], "splits": {},
                               "notes": dict(source.notes), "skipped_images": source.skipped}
    pose = any("keypoints" in f for f in source.category_fields.values())
    (out / "annotations").mkdir(exist_ok=True)
    for split, records in source.splits.items():
        for r in records:
            _place(r, out / split_dir(split) / r.file_name, images)
        semantic = source.semantic_lut is not None and bool(records) and all(r.semantic for r in records)
        if semantic:
            _write_semantic(records, out / f"semantic_{split_dir(split)}", source.semantic_lut)
        ann_file = out / "annotations" / f"instances_{split_dir(split)}.json"
        data = coco_dict(source, records, f"converted from {fmt} ({src}) by fourm21-convert")
        ann_file.write_text(json.dumps(data), encoding="utf-8")
        repairs = check_coco(copy.deepcopy(data), ann_file)
        summary["splits"][split] = {
            "images": len(records), "annotations": len(data["annotations"]),
            "masks": sum(bool(a["segmentation"]) for a in data["annotations"]),
            "semantic_dir": str(out / f"semantic_{split_dir(split)}") if semantic else None, "repairs": repairs}
        if pose:
            summary["splits"][split]["keypoints"] = sum(a.get("num_keypoints", 0) > 0 for a in data["annotations"])
    summary["options"] = {"images": images, "names": names, "val_fraction": val_fraction, "seed": seed,
                          "on_bad_image": on_bad_image, **options}
    summary["complete"] = True
    (out / STAMP).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary
