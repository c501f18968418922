"""Convert a YOLO / VOC / LabelMe folder once into a cached COCO layout, for ``data=yolo`` / ``data=voc``.

``ensure_converted`` is the data configs' ``datamodule.prepare`` hook: it writes ``to_coco.convert``'s output
into ``<cache_dir>/<format>-<source name>-<hash of the source path>`` and converts again only when the
source changed. Whether it changed is read from a fingerprint of the source's files (their number, total
size and latest modification time: one ``stat`` per file, no label or image is read), a hash of YOLO's
data.yaml (its kpt_shape, flip_idx, ... shape the output) and the conversion options, kept in the output's
``.fourm21_convert.json`` stamp. ``converted_split`` is the data sets' factory: the
split of that output through the one COCO reader (``fourm21.data.coco.CocoDataset``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fourm21.data.coco import CocoDataset
from fourm21.data.formats.to_coco import READERS, STAMP, convert, split_dir
from fourm21.data.formats.voc import voc_root
from fourm21.data.formats.yolo import _load, dataset_root, find_yaml
from fourm21.errors import ConfigError, DatasetError

CACHE_VERSION = 2  # bump when the conversion writes something else: every cache converts again (2: keypoints)
_FRESH: dict[str, Path] = {}  # this process already checked (or wrote) these conversions


def _source(fmt: str, src: str | Path | None, yaml_file: str | Path | None = None) -> Path:
    """The folder (or, ``yaml_file`` given, YOLO's data.yaml) to convert, resolved."""
    if fmt not in READERS:
        raise ConfigError(f"format: {fmt!r} is not one of {list(READERS)}")
    if yaml_file is not None and str(yaml_file):
        path = Path(str(yaml_file)).expanduser()
        if not path.is_file():
            raise DatasetError(f"data.yaml: {path} not found (the ultralytics data.yaml to convert)")
        return path.resolve()
    if src is None or not str(src):
        raise ConfigError(f"data.root: the {fmt} folder to train on is required, e.g. data.root=DIR")
    path = Path(str(src)).expanduser()
    if not path.exists():
        raise DatasetError(f"data.root: {path} not found (the {fmt} data to convert)")
    return path.resolve()


def cache_path(fmt: str, src: str | Path | None, cache_dir: str | Path, yaml_file: str | Path | None = None) -> Path:
    """Where the COCO layout of ``src`` is cached: ``<cache_dir>/<fmt>-<name>-<10 hex of the source path>``."""
    src = _source(fmt, src, yaml_file)
    digest = hashlib.sha1(f"{fmt}|{src}".encode()).hexdigest()[:10]
    name = (src.stem if src.is_file() else src.name) or "data"
    return Path(str(cache_dir)).expanduser().resolve() / f"{fmt}-{name}-{digest}"


def watched(fmt: str, src: Path) -> list[Path]:
    """The files and folders whose contents make the conversion: YOLO's yaml and the folder its splits are
    relative to (its ``path``), the VOC root, the LabelMe folder."""
    if fmt == "yolo":
        yaml_file = find_yaml(src)
        return [yaml_file, dataset_root(_load(yaml_file), yaml_file)]
    if fmt == "voc":
        return [voc_root(src)]
    return [src]


def fingerprint(paths: list[Path]) -> dict[str, int]:
    """Number, total size and latest mtime (ns) of the files under ``paths`` (each file once; links followed
    for the file they name, not into linked folders)."""
    seen: set[tuple[int, int]] = set()
    files = size = latest = 0

    def add(st: os.stat_result) -> None:
        nonlocal files, size, latest
        if (st.st_dev, st.st_ino) in seen:
            return
        seen.add((st.st_dev, st.st_ino))
        files, size, latest = files + 1, size + st.st_size, max(latest, st.st_mtime_ns)

    for path in paths:
        if path.is_file():
            add(path.stat())
            continue
        for folder, _, names in os.walk(path):
            for n in names:
                with contextlib.suppress(OSError):  # a broken link: the reader reports it
                    add(os.stat(os.path.join(folder, n)))
    return {"files": files, "bytes": size, "mtime_ns": latest}


def yaml_digest(src: Path) -> str:
    """sha1 of YOLO's data.yaml: its options (names, kpt_shape, flip_idx, ...) shape the output, and an edit
    that keeps its size, with an older mtime than the newest file, would not change the fingerprint."""
    yaml_file = find_yaml(src)
    try:
        return hashlib.sha1(yaml_file.read_bytes()).hexdigest()
    except OSError as e:
        raise DatasetError(f"{yaml_file}: cannot read it ({str(e).splitlines()[0]})") from None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One converting process at a time (DDP: every rank runs the prepare hook)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _stamp(out: Path) -> dict[str, Any]:
    try:
        data = json.loads((out / STAMP).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def ensure_converted(fmt: str, src: str | Path | None, cache_dir: str | Path, *, yaml_file: str | Path | None = None,
                     names: list[str] | None = None, val_fraction: float = 0.1, seed: int = 0,
                     on_bad_image: str = "error", images: str = "symlink", **options: Any) -> Path:
    """The COCO layout of ``src`` (or YOLO's ``yaml_file``), converted now unless the cache holds it for the same
    files and options. ``options`` go to the reader (VOC: image_sets, difficult)."""
    path = _source(fmt, src, yaml_file)
    out = cache_path(fmt, path, cache_dir)
    names = list(names) if names is not None else None
    settings = {"version": CACHE_VERSION, "format": fmt, "src": str(path), "names": names,
                "val_fraction": float(val_fraction), "seed": int(seed), "on_bad_image": on_bad_image,
                "images": images, **options}
    key = json.dumps(settings, sort_keys=True, default=str)
    if _FRESH.get(key) == out and (out / STAMP).is_file():
        return out
    wanted = {**settings, "fingerprint": fingerprint(watched(fmt, path))}
    if fmt == "yolo":
        wanted["yaml_sha1"] = yaml_digest(path)

    def is_fresh() -> bool:
        stamp = _stamp(out)
        return bool(stamp.get("complete")) and stamp.get("cache") == wanted

    if not is_fresh():
        with _locked(out.parent / f".{out.name}.lock"):
            if not is_fresh():  # not converted meanwhile by another process
                print(f"fourm21: converting {fmt} data {path} -> {out} (cached; converted again when it changes)",
                      flush=True)
                summary = convert(fmt, path, out, images=images, overwrite=True, names=names,
                                  val_fraction=val_fraction, seed=seed, on_bad_image=on_bad_image, **options)
                summary["cache"] = wanted
                (out / STAMP).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    _FRESH[key] = out
    return out


def converted_split(fmt: str, src: str | Path | None, cache_dir: str | Path, split: str,
                    yaml_file: str | Path | None = None, semantic_dir: str | Path | None = "auto",
                    **kwargs: Any) -> CocoDataset:
    """A split of the cached conversion as a ``CocoDataset`` (``kwargs`` go to it). ``semantic_dir: auto``:
    the class maps the conversion wrote for the split (VOC's SegmentationClass), else derived from the masks."""
    out = cache_path(fmt, src, cache_dir, yaml_file)
    stamp = _stamp(out)
    if not stamp.get("complete"):
        raise DatasetError(f"{out}: no finished conversion of {src} (the data config's datamodule.prepare, "
                           f"fourm21.data.formats.cached.ensure_converted, writes it)")
    ann_file = out / "annotations" / f"instances_{split_dir(split)}.json"
    if not ann_file.is_file():
        have = ", ".join(stamp.get("splits", {})) or "none"
        raise DatasetError(f"{src}: has no '{split}' split (it has: {have}); a source with only train images: "
                           f"data.val_fraction > 0 holds some out as val")
    if semantic_dir == "auto":
        sem = out / f"semantic_{split_dir(split)}"
        semantic_dir = sem if sem.is_dir() else None
    return CocoDataset(out / split_dir(split), ann_file, semantic_dir=semantic_dir, **kwargs)
