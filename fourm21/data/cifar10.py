"""CIFAR-10 for the classification head, in both common layouts.

- the official python pickles (``<root>/cifar-10-batches-py``), read and, with ``download=True``,
  fetched by torchvision's reader;
- an image-folder tree (``<root>/train/<class>/*.jpg``, ``<root>/test/<class>/*.jpg``).

The 32x32 images are decoded once and kept as one uint8 array (for the folder layout also
cached on disk as ``<root>/.fourm21_cache_<split>.npz``), so epochs do no JPEG decoding.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from fourm21.data.sample import Sample
from fourm21.errors import DatasetError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
SPLITS = ("train", "test")


def _read_folder(split_dir: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
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
    try:
        from rich.progress import track
        it = track(enumerate(files), total=len(files), description=f"decoding {split_dir.name}", transient=True)
    except ImportError:  # pragma: no cover
        it = enumerate(files)
    for i, f in it:
        try:
            with Image.open(f) as im:
                im = im.convert("RGB")
                if im.size != (32, 32):
                    im = im.resize((32, 32), Image.BILINEAR)
                images[i] = np.asarray(im)
        except OSError as e:
            raise DatasetError(f"cannot read image {f}: {e}") from None
    return images, np.asarray(labels, dtype=np.int64), list(order)


def load_cifar10(root: str | Path, split: str = "train", download: bool = False) -> tuple[np.ndarray, np.ndarray,
                                                                                           list[str]]:
    """Images (N, 32, 32, 3) uint8, labels (N,), class names, from whichever layout ``root`` holds."""
    if split not in SPLITS:
        raise DatasetError(f"CIFAR-10 split must be one of {SPLITS}, got '{split}'")
    root = Path(root)
    split_dir = root / split
    if split_dir.is_dir():
        cache = root / f".fourm21_cache_{split}.npz"
        if cache.is_file():
            with np.load(cache, allow_pickle=False) as z:
                return z["images"], z["labels"], [str(c) for c in z["classes"]]
        images, labels, classes = _read_folder(split_dir)
        with contextlib.suppress(OSError):  # a read-only root still works, just without the cache
            np.savez(cache, images=images, labels=labels, classes=np.array(classes))
        return images, labels, classes
    if (root / "cifar-10-batches-py").is_dir() or download:
        from torchvision.datasets import CIFAR10
        try:
            ds = CIFAR10(str(root), train=split == "train", download=download)
        except RuntimeError as e:
            raise DatasetError(f"CIFAR-10 under {root}: {e}") from None
        return np.asarray(ds.data), np.asarray(ds.targets, dtype=np.int64), list(ds.classes)
    raise DatasetError(f"no CIFAR-10 at {root}: expected {split_dir}/<class>/*.jpg or {root}/cifar-10-batches-py "
                       f"(set data.download=true to fetch the official archive)")


class Cifar10Dataset(Dataset):
    """Samples with ``image`` and ``label`` only: CIFAR-10 trains the classification head alone."""

    def __init__(self, root: str | Path, split: str = "train", transform: Any = None, download: bool = False,
                 limit: int | None = None, source: str = "cifar10", classes: list[str] | None = None) -> None:
        """``classes`` keeps only those classes (by name), relabelled 0..len-1 in the given order:
        e.g. train on five CIFAR-10 classes and hold the other five out for few-shot tests."""
        self.images, self.labels, self.image_class_names = load_cifar10(root, split, download)
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
        out = self.transform(image=image)["image"] if self.transform is not None else image.astype(np.float32) / 255
        return {"image": torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1))).float(),
                "label": int(self.labels[index]),
                "meta": {"image_id": index, "source": self.source, "orig_size": image.shape[:2],
                         "scale": out.shape[0] / image.shape[0]}}
