"""COCO instances (JSON polygons) -> the YOLO-seg text layout ultralytics reads, for the training benchmarks.

``bench_train.py`` and ``bench_train_cli.py`` feed ultralytics the same images fourm21 trains on, so
the COCO folder is converted into ``OUT/images/<split>/`` (symlinks to the original JPEGs),
``OUT/labels/<split>/<stem>.txt`` (one instance a line: ``class x1 y1 x2 y2 ...``, coordinates
normalised to [0, 1]) and ``OUT/data.yaml``. Class indices are the sorted COCO category ids numbered
0.., as ``fourm21.data.coco.CocoDataset`` numbers them. As in fourm21's training targets, crowd
annotations are left out; an instance given as several polygon parts keeps its largest part (YOLO-seg
has one polygon a line); one given only as RLE, or without a mask, gets its box as polygon.

``offline_ultralytics`` is the other thing both scripts need: ultralytics settings in a private
folder, and the fonts its plotting and dataset checks would otherwise try to download.

    python scripts/coco_to_yolo.py ../shared/data/coco-mini /tmp/coco-mini-yolo
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

SPLITS = ("train2017", "val2017")


def _polygon_area(xy: list[float]) -> float:
    xs, ys = xy[0::2], xy[1::2]
    return 0.5 * abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs))))


def instance_polygon(ann: dict) -> list[float]:
    """One polygon (x1, y1, x2, y2, ...) in pixels: the largest part, or the box when there is no polygon."""
    seg = ann.get("segmentation")
    parts = [p for p in seg if len(p) >= 6] if isinstance(seg, list) else []
    if parts:
        return max(parts, key=_polygon_area)
    x, y, w, h = ann["bbox"]
    return [x, y, x + w, y, x + w, y + h, x, y + h]


def label_lines(anns: list[dict], cat_index: dict[int, int], width: int, height: int) -> list[str]:
    """The YOLO-seg label file of one image: ``class x1 y1 ...`` normalised and clipped to [0, 1]."""
    lines = []
    for a in anns:
        if a.get("iscrowd", 0) or a.get("category_id") not in cat_index:
            continue
        poly = instance_polygon(a)
        coords = [min(max(v / (width if i % 2 == 0 else height), 0.0), 1.0) for i, v in enumerate(poly)]
        lines.append(" ".join([str(cat_index[a["category_id"]]), *(f"{c:.6f}" for c in coords)]))
    return lines


def convert_split(coco_root: Path, split: str, out: Path) -> tuple[int, int]:
    """Write the images (symlinks) and labels of one split; returns (images, instances) written."""
    ann = json.loads((coco_root / "annotations" / f"instances_{split}.json").read_text())
    cat_index = {c: i for i, c in enumerate(sorted(c["id"] for c in ann["categories"]))}
    by_image: dict[int, list[dict]] = {}
    for a in ann["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    img_dir, lbl_dir = out / "images" / split, out / "labels" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    lbl_dir.mkdir(parents=True, exist_ok=True)
    instances = 0
    for info in ann["images"]:
        dst = img_dir / Path(info["file_name"]).name
        if not dst.exists():
            dst.symlink_to((coco_root / split / info["file_name"]).resolve())
        lines = label_lines(by_image.get(info["id"], []), cat_index, info["width"], info["height"])
        instances += len(lines)
        (lbl_dir / f"{dst.stem}.txt").write_text("".join(f"{line}\n" for line in lines))
    return len(ann["images"]), instances


def convert(coco_root: str | Path, out: str | Path, splits: tuple[str, ...] = SPLITS) -> Path:
    """Convert every split present under ``coco_root``; returns the ``data.yaml`` to give ultralytics."""
    coco_root, out = Path(coco_root).resolve(), Path(out).resolve()
    present = [s for s in splits if (coco_root / "annotations" / f"instances_{s}.json").is_file()]
    if not present:
        raise FileNotFoundError(f"{coco_root}: no annotations/instances_<split>.json for any of {splits}")
    for split in present:
        convert_split(coco_root, split, out)
    ann = json.loads((coco_root / "annotations" / f"instances_{present[0]}.json").read_text())
    names = [c["name"] for c in sorted(ann["categories"], key=lambda c: c["id"])]
    val = "val2017" if "val2017" in present else present[0]
    lines = [f"path: {out}", f"train: images/{present[0]}", f"val: images/{val}", f"nc: {len(names)}", "names:"]
    lines += [f"  {i}: {json.dumps(n)}" for i, n in enumerate(names)]
    data_yaml = out / "data.yaml"
    data_yaml.write_text("\n".join(lines) + "\n")
    return data_yaml


def offline_ultralytics(config_dir: str | Path) -> dict[str, str]:
    """Environment for running ultralytics with nothing to download; also applied to ``os.environ``.

    Its settings go to ``config_dir`` (not ~/.config); ``YOLO_OFFLINE`` stops its online checks and
    event reporting; its dataset check and plots look for Arial fonts in that folder and would fetch
    them from the internet otherwise, so matplotlib's DejaVu Sans is put there under those names.
    """
    config_dir = Path(config_dir)
    fonts = config_dir / "Ultralytics"
    fonts.mkdir(parents=True, exist_ok=True)
    import matplotlib

    dejavu = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not (fonts / name).exists():
            shutil.copyfile(dejavu, fonts / name)
    env = {"YOLO_CONFIG_DIR": str(config_dir), "YOLO_OFFLINE": "1", "YOLO_VERBOSE": "False"}
    os.environ.update(env)
    return env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("coco_root", help="folder with train2017/, val2017/, annotations/instances_<split>.json")
    p.add_argument("out", help="output folder (images/, labels/, data.yaml)")
    args = p.parse_args(argv)
    print(convert(args.coco_root, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
