"""YOLO txt labels in the ultralytics layout: a ``data.yaml`` (``path``, ``train``, ``val``, ``test``, ``names``)
and, per image ``.../images/<x>.jpg``, a label file ``.../labels/<x>.txt``.

A label line is ``class cx cy w h`` (a box) or ``class x1 y1 ... xn yn`` (a polygon, n >= 3), normalised
to [0, 1]. With ``kpt_shape: [K, D]`` in data.yaml (pose) a line is the box and K keypoints of D values
(``px py`` or ``px py visibility``), written as COCO keypoints (see ``pose_spec``). ``names`` is a
list or a ``{id: name}`` dict; class k becomes COCO category k + 1. ``train`` / ``val`` / ``test`` are
folders of images, text files listing images, or lists of either, relative to ``path``. A relative
``path`` that does not exist from the yaml's folder or the working directory falls back to the yaml's
own folder, so coco128.yaml (``path: ../datasets/coco128``) works copied into the data set's folder.
An image without a label file is kept as an image without objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fourm21.data.formats.records import ImageRecord, Instance, Source, box_instance, image_size, polygon_instance
from fourm21.data.images import IMAGE_SUFFIXES
from fourm21.errors import BadImageError, DatasetError

SPLITS = ("train", "val", "test")
COORD_TOL = 0.01  # normalised coordinates this far outside [0, 1] are clipped; further out they are an error


def find_yaml(src: Path) -> Path:
    """The data.yaml of ``src``: the file itself, ``src/data.yaml`` or the one yaml file in ``src``."""
    if src.is_file():
        return src
    if (src / "data.yaml").is_file():
        return src / "data.yaml"
    found = sorted(p for p in src.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    if len(found) == 1:
        return found[0]
    if not found:
        raise DatasetError(f"{src}: no data.yaml (the ultralytics layout: data.yaml with path, train, val and names, "
                           f"images/ and labels/)")
    raise DatasetError(f"{src}: several yaml files ({', '.join(p.name for p in found)}); name one, src=PATH.yaml")


def _load(yaml_file: Path) -> dict:
    try:
        cfg = yaml.safe_load(yaml_file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise DatasetError(f"{yaml_file}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(cfg, dict):
        raise DatasetError(f"{yaml_file}: must be a mapping with train, val and names")
    return cfg


def categories(cfg: dict, yaml_file: Path, names: list[str] | None) -> list[tuple[int, str]]:
    """[(COCO id, name)] from ``names`` (given) or data.yaml's ``names`` (list or dict) / ``nc``."""
    raw = names if names is not None else cfg.get("names")
    if raw is None and isinstance(cfg.get("nc"), int):
        raw = [f"class_{i}" for i in range(cfg["nc"])]
    if isinstance(raw, list):
        pairs = list(enumerate(raw))
    elif isinstance(raw, dict):
        try:
            pairs = sorted((int(k), v) for k, v in raw.items())
        except (TypeError, ValueError):
            raise DatasetError(f"{yaml_file}: names: the keys of a names dict must be class ids 0, 1, ...") from None
    else:
        raise DatasetError(f"{yaml_file}: names: a list or an {{id: name}} dict of the class names is required")
    if not pairs or any(k < 0 for k, _ in pairs):
        raise DatasetError(f"{yaml_file}: names: needs at least one class, with ids >= 0")
    nc = cfg.get("nc")
    if names is None and isinstance(nc, int) and nc != len(pairs):
        raise DatasetError(f"{yaml_file}: nc is {nc} but names has {len(pairs)} classes")
    return [(k + 1, str(v)) for k, v in pairs]


def dataset_root(cfg: dict, yaml_file: Path) -> Path:
    """The folder ``train`` / ``val`` are relative to (see the module docstring)."""
    here = yaml_file.parent
    path = cfg.get("path")
    if not path:
        return here
    path = Path(str(path)).expanduser()
    if path.is_absolute():
        if not path.is_dir():
            raise DatasetError(f"{yaml_file}: path: {path} not found")
        return path
    for candidate in (here / path, Path.cwd() / path):
        if candidate.is_dir():
            return candidate.resolve()
    train = cfg.get("train")
    first = train[0] if isinstance(train, list) and train else train
    if isinstance(first, str) and (here / first).exists():
        return here
    raise DatasetError(f"{yaml_file}: path: {path} not found (looked in {here} and {Path.cwd()})")


def _resolve(entry: str, root: Path) -> Path | None:
    p = Path(entry).expanduser()
    if p.is_absolute():
        return p if p.exists() else None
    if (root / p).exists():
        return root / p
    if entry.startswith("../") and (root / entry[3:]).exists():  # Roboflow's exports: '../train/images'
        return root / entry[3:]
    return None


def split_images(entry: str | list, root: Path, yaml_file: Path, split: str) -> list[tuple[Path, str]]:
    """(image file, name under the COCO split folder) for a ``train`` / ``val`` / ``test`` entry."""
    entries = entry if isinstance(entry, list) else [entry]
    out: list[tuple[Path, str]] = []
    for e in entries:
        where = _resolve(str(e), root)
        if where is None:
            raise DatasetError(f"{yaml_file}: {split}: {e} not found under {root}")
        prefix = f"{where.name}/" if len(entries) > 1 else ""
        if where.is_dir():
            files = sorted(p for p in where.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            out += [(f, prefix + f.relative_to(where).as_posix()) for f in files]
        else:
            out += [(f, prefix + _listed_name(f, root)) for f in _listed(where)]
    return out


def _listed(txt: Path) -> list[Path]:
    """The images a split's text file lists, one a line, relative to its folder (ultralytics' './')."""
    files = []
    for line in txt.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            p = Path(line)
            files.append(p if p.is_absolute() else txt.parent / p)
    return files


def _listed_name(f: Path, root: Path) -> str:
    try:
        parts = f.resolve().relative_to(root.resolve()).parts
    except ValueError:
        return f.name
    return "/".join(parts[1:] if parts[0] == "images" and len(parts) > 1 else parts)


def label_path(image: Path) -> Path:
    """``.../images/<x>.jpg`` -> ``.../labels/<x>.txt`` (the last ``images`` folder), else ``<x>.txt`` beside it."""
    parts = list(image.parts)
    if "images" in parts[:-1]:
        i = len(parts) - 2 - parts[:-1][::-1].index("images")
        parts[i] = "labels"
    return Path(*parts).with_suffix(".txt")


@dataclass(frozen=True)
class PoseSpec:
    """data.yaml's keypoint settings: ``k`` points of ``d`` values (2: x y; 3: x y visibility) after each box,
    their names per class id (0-based), COCO's 1-based ``skeleton`` pairs and the 0-based left/right ``flip_idx``."""

    k: int
    d: int
    names: dict[int, list[str]]
    skeleton: list[list[int]]
    flip_idx: list[int] | None

    @property
    def fields(self) -> int:
        """Fields of a label line: class, the box, then the keypoints."""
        return 5 + self.k * self.d

    def category_fields(self, class_id: int) -> dict[str, Any]:
        """The keys a category's COCO entry gets for class ``class_id`` (flip_idx only when data.yaml has it)."""
        out: dict[str, Any] = {"keypoints": list(self.names[class_id]),
                               "skeleton": [list(p) for p in self.skeleton]}
        if self.flip_idx is not None:
            out["flip_idx"] = list(self.flip_idx)
        return out


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _name_list(raw: Any, k: int, yaml_file: Path, key: str) -> list[str]:
    if not isinstance(raw, list) or len(raw) != k or not all(isinstance(n, str | int | float) for n in raw):
        got = f"{len(raw)} names" if isinstance(raw, list) else repr(raw)
        raise DatasetError(f"{yaml_file}: {key}: needs a list of {k} keypoint names (kpt_shape has {k} points), "
                           f"got {got}")
    return [str(n) for n in raw]


def pose_spec(cfg: dict, yaml_file: Path, ids: set[int]) -> PoseSpec | None:
    """data.yaml's ``kpt_shape`` / ``kpt_names`` / ``skeleton`` / ``flip_idx``, checked; None without
    ``kpt_shape`` (the other keys are then ignored, as ultralytics does)."""
    shape = cfg.get("kpt_shape")
    if shape is None:
        return None
    if not (isinstance(shape, list) and len(shape) == 2 and all(_is_int(v) for v in shape)
            and shape[0] >= 1 and shape[1] in (2, 3)):
        raise DatasetError(f"{yaml_file}: kpt_shape: must be [K, D], K >= 1 keypoints of D = 2 (x y) or 3 "
                           f"(x y visibility) values, got {shape!r}")
    k, d = shape
    default = [str(i) for i in range(k)]
    raw = cfg.get("kpt_names")
    if raw is None:
        names = {c: default for c in ids}
    elif isinstance(raw, dict):  # ultralytics: {class id: [names]}; classes left out get "0", "1", ...
        names = {c: default for c in ids}
        for key, value in raw.items():
            try:
                c = int(key)
            except (TypeError, ValueError):
                c = -1
            if c not in ids:
                raise DatasetError(f"{yaml_file}: kpt_names: key {key!r} is not a class id of names "
                                   f"({_id_range(ids)})")
            names[c] = _name_list(value, k, yaml_file, f"kpt_names[{key}]")
    else:
        names = dict.fromkeys(ids, _name_list(raw, k, yaml_file, "kpt_names"))
    skeleton = cfg.get("skeleton") or []
    if not (isinstance(skeleton, list) and all(
            isinstance(p, list) and len(p) == 2 and all(_is_int(i) and 1 <= i <= k for i in p) for p in skeleton)):
        raise DatasetError(f"{yaml_file}: skeleton: must be a list of [a, b] pairs of keypoints numbered "
                           f"1..{k} (COCO's 1-based skeleton), got {skeleton!r}")
    flip = cfg.get("flip_idx")
    if flip is not None and not (isinstance(flip, list) and all(_is_int(i) for i in flip)
                                 and sorted(flip) == list(range(k))):
        raise DatasetError(f"{yaml_file}: flip_idx: must list each keypoint 0..{k - 1} once (the 0-based index "
                           f"each point becomes when the image is flipped left-right), got {flip!r}")
    return PoseSpec(k, d, names, skeleton, flip)


def _visibility(v: float) -> int:
    """COCO's v from a YOLO visibility: 0 stays 0 (not labelled); a labelled point is 1 (occluded) or 2
    (visible), anything else clipped to those (ultralytics writes 0/1 or 0/1/2, some tools a confidence)."""
    return 0 if v <= 0 else min(2, max(1, int(v)))


def parse_keypoints(values: list[float], pose: PoseSpec, h: int, w: int, where: str) -> list[float]:
    """COCO's flat ``[x, y, v] * K`` in pixels from a line's keypoint values (x = y = 0 where v = 0)."""
    out: list[float] = []
    for j in range(pose.k):
        point = values[j * pose.d:(j + 1) * pose.d]
        x, y = point[0], point[1]
        if pose.d == 3:
            if not math.isfinite(point[2]):
                raise DatasetError(f"{where}: keypoint {j} visibility {point[2]:g} is not a number 0, 1 or 2")
            v = _visibility(point[2])
        else:  # no visibility: a point at (0, 0) is ultralytics' "not labelled"
            v = 0 if x == 0 and y == 0 else 2
        if v == 0:
            out += [0.0, 0.0, 0]
            continue
        bad = [c for c in (x, y) if not (math.isfinite(c) and -COORD_TOL <= c <= 1 + COORD_TOL)]
        if bad:
            raise DatasetError(f"{where}: keypoint {j} coordinate {bad[0]:g} is not normalised to [0, 1] (YOLO "
                               f"labels are fractions of the image width and height, not pixels)")
        out += [min(max(x, 0.0), 1.0) * w, min(max(y, 0.0), 1.0) * h, v]
    return out


def parse_labels(label: Path, h: int, w: int, ids: set[int], pose: PoseSpec | None = None) -> list[Instance]:
    """The objects of one label file (with ``pose``: boxes with keypoints); a DatasetError naming ``file:line``
    for a line that cannot be read."""
    try:
        text = label.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as e:
        raise DatasetError(f"{label}: cannot read the label file ({str(e).splitlines()[0]})") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{label}:{n}"
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise DatasetError(f"{where}: not a list of numbers: {line.strip()!r}") from None
        k = len(fields)
        if pose is not None and k != pose.fields:
            raise DatasetError(f"{where}: {k} fields; with data.yaml's kpt_shape [{pose.k}, {pose.d}] a line is "
                               f"'class cx cy w h' and {pose.k} x {pose.d} keypoint values ({pose.fields} fields)")
        if pose is None and not (k == 5 or (k >= 7 and k % 2 == 1)):
            raise DatasetError(f"{where}: {k} fields; a YOLO label line is 'class cx cy w h' (5 fields) or "
                               f"'class x1 y1 x2 y2 x3 y3 ...' (1 + 2n fields, n >= 3)")
        cls = values[0]
        if not cls.is_integer() or int(cls) not in ids:
            raise DatasetError(f"{where}: class id {fields[0]} out of range: data.yaml names has {len(ids)} "
                               f"classes ({_id_range(ids)})")
        coords = values[1:5] if pose is not None else values[1:]
        bad = [v for v in coords if not (math.isfinite(v) and -COORD_TOL <= v <= 1 + COORD_TOL)]
        if bad:
            raise DatasetError(f"{where}: coordinate {bad[0]:g} is not normalised to [0, 1] (YOLO labels are "
                               f"fractions of the image width and height, not pixels)")
        coords = [min(max(v, 0.0), 1.0) for v in coords]
        cat = int(cls) + 1
        if len(coords) == 4:
            cx, cy, bw, bh = coords
            inst = box_instance(cat, (cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h)
            if pose is not None:
                inst.keypoints = parse_keypoints(values[5:], pose, h, w, where)
            out.append(inst)
        else:
            out.append(polygon_instance(cat, [[v * (w if i % 2 == 0 else h) for i, v in enumerate(coords)]]))
    return out


def _id_range(ids: set[int]) -> str:
    ordered = sorted(ids)
    return f"0..{ordered[-1]}" if ordered == list(range(len(ordered))) else f"ids {ordered}"


def read_yolo(src: Path, names: list[str] | None = None, on_bad_image: str = "error") -> Source:
    """Read an ultralytics-layout data set (the folder holding data.yaml, or the yaml itself)."""
    yaml_file = find_yaml(src)
    cfg = _load(yaml_file)
    cats = categories(cfg, yaml_file, names)
    ids = {c - 1 for c, _ in cats}
    root = dataset_root(cfg, yaml_file)
    pose = pose_spec(cfg, yaml_file, ids)
    source = Source(cats, {})
    if pose is not None:
        source.category_fields = {c + 1: pose.category_fields(c) for c in ids}
    for split in SPLITS:
        if not cfg.get(split):
            continue
        records = []
        for image, name in split_images(cfg[split], root, yaml_file, split):
            try:
                h, w = image_size(image)
            except BadImageError as e:
                if on_bad_image != "skip":
                    raise
                source.skipped[str(image)] = e.reason
                continue
            label = label_path(image)
            if label.is_file():
                instances = parse_labels(label, h, w, ids, pose)
            else:
                instances = []
                source.notes["images without a label file (kept, without objects)"] += 1
            records.append(ImageRecord(name, h, w, image, instances=instances))
        source.splits[split] = records
    if not source.splits:
        raise DatasetError(f"{yaml_file}: names no split (train, val or test)")
    return source
