"""CIFAR-10 for the classification head, in both common layouts.

- the official python pickles (``<root>/cifar-10-batches-py``), read and, with ``download=True``,
  fetched by torchvision's reader;
- an image-folder tree (``<root>/train/<class>/*.jpg``, ``<root>/test/<class>/*.jpg``).

The 32x32 images are decoded once and kept as one uint8 array (for the folder layout also
cached on disk as ``<root>/.fourm21_cache_<split>.npz``), so epochs do no JPEG decoding. An
image that cannot be read stops the decoding (``on_bad_image=error``) or is left out and recorded
(``skip``; the cache remembers the skipped files). A cache that cannot be read is rebuilt.
"""

from __future__ import annotations

import contextlib
import logging
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from fourm21.data.images import SkipLog, check_policy, read_image_or_skip
from fourm21.data.sample import Sample
from fourm21.data.transforms import transformed_image
from fourm21.errors import DatasetError

log = logging.getLogger(__name__)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
SPLITS = ("train", "test")


def _read_folder(split_dir: Path, on_bad_image: str, skips: SkipLog) -> tuple[np.ndarray, np.ndarray, list[str]]:
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    known = [c for c in CIFAR10_CLASSES if c in classes]
    order = known if len(known) == len(classes) else classes  # official label order when the names match
    files, labels = [], []
    for idx, name in enumerate(order):
        for f in sorted((split_dir / name).iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                files.append(f)
                labels.append(idx)
    if not files:
        raise DatasetError(f"no images under {split_dir}/<class>/")
    images = np.empty((len(files), 32, 32, 3), dtype=np.uint8)
    good = np.ones(len(files), dtype=bool)
    try:
        from rich.progress import track
        it = track(enumerate(files), total=len(files), description=f"decoding {split_dir.name}", transient=True)
    except ImportError:  # pragma: no cover
        it = enumerate(files)
    for i, f in it:
        image = read_image_or_skip(f, on_bad_image, skips)
        if image is None:
            good[i] = False
            continue
        if image.shape[:2] != (32, 32):
            image = np.asarray(Image.fromarray(image).resize((32, 32), Image.BILINEAR))
        images[i] = image
    if not good.any():
        raise DatasetError(f"no readable image under {split_dir}/<class>/ (all {len(files)} skipped)")
    return images[good], np.asarray(labels, dtype=np.int64)[good], list(order)


def _read_cache(cache: Path, skips: SkipLog) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    try:
        with np.load(cache, allow_pickle=False) as z:
            for line in z["skipped"].tolist() if "skipped" in z.files else []:
                file, _, reason = str(line).partition("\t")
                skips.add(file, reason)
            return z["images"], z["labels"], [str(c) for c in z["classes"]]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        log.warning("cannot read the cache %s (%s): decoding the images again", cache, str(e).splitlines()[0])
        return None


def load_cifar10(root: str | Path, split: str = "train", download: bool = False, on_bad_image: str = "error",
                 skips: SkipLog | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images (N, 32, 32, 3) uint8, labels (N,), class names, from whichever layout ``root`` holds.

    Images left out under ``on_bad_image=skip`` are recorded in ``skips``."""
    if split not in SPLITS:
        raise DatasetError(f"CIFAR-10 split must be one of {SPLITS}, got '{split}'")
    check_policy(on_bad_image)
    skips = skips if skips is not None else SkipLog("cifar10")
    root = Path(root)
    split_dir = root / split
    if split_dir.is_dir():
        cache = root / f".fourm21_cache_{split}.npz"
        cached = _read_cache(cache, skips) if cache.is_file() else None
        if cached is not None:
            return cached
        images, labels, classes = _read_folder(split_dir, on_bad_image, skips)
        skipped = np.array([f"{f}\t{r}" for f, r in skips.entries().items()], dtype=str)
        with contextlib.suppress(OSError):  # a read-only root still works, just without the cache
            np.savez(cache, images=images, labels=labels, classes=np.array(classes), skipped=skipped)
        return images, labels, classes
    if (root / "cifar-10-batches-py").is_dir() or download:
        from torchvision.datasets import CIFAR10
        try:
            ds = CIFAR10(str(root), train=split == "train", download=download)
        except Exception as e:  # noqa: BLE001 - torchvision raises RuntimeError, pickle and OS errors alike
            detail = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DatasetError(f"CIFAR-10 under {root}: {detail} (a cut-short or foreign file in "
                               f"{root / 'cifar-10-batches-py'}? delete it and download again)") from None
        return np.asarray(ds.data), np.asarray(ds.targets, dtype=np.int64), list(ds.classes)
    raise DatasetError(f"no CIFAR-10 at {root}: expected {split_dir}/<class>/*.jpg or {root}/cifar-10-batches-py "
                       f"(set data.download=true to fetch the official archive)")


class Cifar10Dataset(Dataset):
    """Samples with ``image`` and ``label`` only: CIFAR-10 trains the classification head alone."""

    def __init__(self, root: str | Path, split: str = "train", transform: Any = None, download: bool = False,
                 limit: int | None = None, source: str = "cifar10", classes: list[str] | None = None,
                 on_bad_image: str = "error", holdout: int = 0, take: str = "rest") -> None:
        """``classes`` keeps only those classes (by name), relabelled 0..len-1 in the given order:
        e.g. train on five CIFAR-10 classes and hold the other five out for few-shot tests.
        ``on_bad_image``: see ``load_cifar10`` (images are decoded here, once).
        ``holdout`` N > 0 sets N images of ``split`` aside (a seeded draw, the same for every run): ``take``
        'rest' keeps the others (training), 'holdout' those N (validation, so that checkpoints and settings
        are chosen without looking at the test split)."""
        if take not in ("rest", "holdout"):
            raise DatasetError(f"CIFAR-10 take must be 'rest' or 'holdout', got '{take}'")
        self.skip_log = SkipLog(source, f"{Path(root).resolve()}|{split}")
        self.images, self.labels, self.image_class_names = load_cifar10(root, split, download, on_bad_image,
                                                                        self.skip_log)
        if classes:
            unknown = [c for c in classes if c not in self.image_class_names]
            if unknown:
                raise DatasetError(f"CIFAR-10 has no class(es) {unknown}; it has {self.image_class_names}")
            old = [self.image_class_names.index(c) for c in classes]
            keep = np.isin(self.labels, old)
            remap = {o: n for n, o in enumerate(old)}
            self.images = self.images[keep]
            self.labels = np.array([remap[int(v)] for v in self.labels[keep]], dtype=np.int64)
            self.image_class_names = list(classes)
        if holdout:
            if not 0 < int(holdout) < len(self.labels):
                raise DatasetError(f"CIFAR-10 holdout must be between 0 and the {len(self.labels)} images of "
                                   f"'{split}', got {holdout}")
            held = np.zeros(len(self.labels), dtype=bool)
            held[np.random.default_rng(12345).permutation(len(self.labels))[: int(holdout)]] = True
            keep = held if take == "holdout" else ~held
            self.images, self.labels = self.images[keep], self.labels[keep]
        if limit:
            # a seeded random subset, for quick runs and tests
            rng = np.random.default_rng(0)
            keep = np.sort(rng.permutation(len(self.labels))[:limit])
            self.images, self.labels = self.images[keep], self.labels[keep]
        self.transform = transform
        self.source = source
        self.class_names: list[str] = []

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Sample:
        image = self.images[index]
        out = transformed_image(self.transform, image)
        return {"image": out,
                "label": int(self.labels[index]),
                "meta": {"image_id": index, "source": self.source, "orig_size": image.shape[:2],
                         "scale": out.shape[1] / image.shape[0]}}
