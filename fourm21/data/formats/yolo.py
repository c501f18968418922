"""YOLO txt labels in the ultralytics layout: a ``data.yaml`` (``path``, ``train``, ``val``, ``test``, ``names``)
and, per image ``.../images/<x>.jpg``, a label file ``.../labels/<x>.txt``.

A label line is ``class cx cy w h`` (a box) or ``class x1 y1 ... xn yn`` (a polygon, n >= 3), normalised
to [0, 1]; with ``kpt_shape`` in data.yaml (pose) the keypoints after the box are ignored. ``names`` is a
list or a ``{id: name}`` dict; class k becomes COCO category k + 1. ``train`` / ``val`` / ``test`` are
folders of images, text files listing images, or lists of either, relative to ``path``. A relative
``path`` that does not exist from the yaml's folder or the working directory falls back to the yaml's
own folder, so coco128.yaml (``path: ../datasets/coco128``) works copied into the data set's folder.
An image without a label file is kept as an image without objects.
"""

from __future__ import annotations

import math
from pathlib import Path

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


def parse_labels(label: Path, h: int, w: int, ids: set[int], box_fields: int | None) -> list[Instance]:
    """The objects of one label file; a DatasetError naming ``file:line`` for a line that cannot be read."""
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
        if box_fields is not None and k != box_fields:
            raise DatasetError(f"{where}: {k} fields; with data.yaml's kpt_shape a line has {box_fields}")
        if box_fields is None and not (k == 5 or (k >= 7 and k % 2 == 1)):
            raise DatasetError(f"{where}: {k} fields; a YOLO label line is 'class cx cy w h' (5 fields) or "
                               f"'class x1 y1 x2 y2 x3 y3 ...' (1 + 2n fields, n >= 3)")
        cls = values[0]
        if not cls.is_integer() or int(cls) not in ids:
            raise DatasetError(f"{where}: class id {fields[0]} out of range: data.yaml names has {len(ids)} "
                               f"classes ({_id_range(ids)})")
        coords = values[1:5] if box_fields is not None else values[1:]
        bad = [v for v in coords if not (math.isfinite(v) and -COORD_TOL <= v <= 1 + COORD_TOL)]
        if bad:
            raise DatasetError(f"{where}: coordinate {bad[0]:g} is not normalised to [0, 1] (YOLO labels are "
                               f"fractions of the image width and height, not pixels)")
        coords = [min(max(v, 0.0), 1.0) for v in coords]
        cat = int(cls) + 1
        if len(coords) == 4:
            cx, cy, bw, bh = coords
            out.append(box_instance(cat, (cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h))
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
    kpt = cfg.get("kpt_shape")
    box_fields = 5 + math.prod(int(v) for v in kpt) if isinstance(kpt, list) and kpt else None
    source = Source(cats, {})
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
                instances = parse_labels(label, h, w, ids, box_fields)
            else:
                instances = []
                source.notes["images without a label file (kept, without objects)"] += 1
            records.append(ImageRecord(name, h, w, image, instances=instances))
        source.splits[split] = records
    if not source.splits:
        raise DatasetError(f"{yaml_file}: names no split (train, val or test)")
    return source
