"""Any image-folder tree for the classification head: ``<root>/<split>/<class>/**/*.jpg``, images of any size.

The class names are the folder names of the training split, sorted, so every split shares one index
(a class folder in val that train lacks is an error). Images are decoded when a sample is asked for,
not held in RAM as the 32x32 CIFAR-10 set is. ``data.num_image_classes: null`` (configs/data/
image_folder.yaml) is filled in by the training entry point from the training set's class names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from fourm21.data.images import IMAGE_SUFFIXES, SkipLog, check_policy, read_image_or_skip
from fourm21.data.sample import Sample
from fourm21.data.transforms import transformed_image
from fourm21.errors import DatasetError

LAYOUT = "root/train/<class>/*.jpg and root/val/<class>/*.jpg"


def folder_classes(split_dir: str | Path) -> list[str]:
    """The class names of one split: its sub-folders (hidden ones left out), sorted."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DatasetError(f"data.root: no folder {split_dir} (an ImageFolder tree is {LAYOUT})")
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DatasetError(f"{split_dir}: no class folders (an ImageFolder tree is {LAYOUT})")
    return classes


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


class ImageFolderDataset(Dataset):
    """Samples with ``image`` and ``label`` only, like ``Cifar10Dataset``, from an image-folder tree.

    ``classes`` keeps only those classes (by name), relabelled 0..len-1 in the given order. ``limit``
    keeps a seeded random subset. ``on_bad_image``: ``error`` raises a BadImageError naming the file,
    ``skip`` returns None for that index (``collate_samples`` leaves it out) and records it."""

    def __init__(self, root: str | Path, split: str = "train", transform: Any = None, class_split: str = "train",
                 classes: list[str] | None = None, limit: int | None = None, source: str = "image_folder",
                 on_bad_image: str = "error") -> None:
        root = Path(root)
        self.split_dir = root / split
        known = folder_classes(root / class_split)
        here = folder_classes(self.split_dir)
        extra = [c for c in here if c not in known]
        if extra:
            raise DatasetError(f"{self.split_dir}: class folder(s) {extra} are not in {root / class_split}, "
                               f"whose folders name the classes")
        if classes:
            unknown = [c for c in classes if c not in known]
            if unknown:
                raise DatasetError(f"{root / class_split} has no class(es) {unknown}; it has {known}")
            known = list(classes)
        self.files: list[Path] = []
        labels: list[int] = []
        for idx, name in enumerate(known):
            files = _images(self.split_dir / name) if (self.split_dir / name).is_dir() else []
            if not files and split == class_split:
                raise DatasetError(f"{self.split_dir / name}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                                   f"add some or remove the folder")
            self.files += files
            labels += [idx] * len(files)
        if not self.files:
            raise DatasetError(f"{self.split_dir}: no images under its class folders")
        self.labels = np.asarray(labels, dtype=np.int64)
        if limit:
            keep = np.sort(np.random.default_rng(0).permutation(len(self.files))[: int(limit)])
            self.files, self.labels = [self.files[i] for i in keep], self.labels[keep]
        self.image_class_names = known
        self.class_names: list[str] = []
        self.transform = transform
        self.source = source
        self.on_bad_image = check_policy(on_bad_image)
        self.skip_log = SkipLog(source, f"{self.split_dir.resolve()}")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Sample | None:
        image = read_image_or_skip(self.files[index], self.on_bad_image, self.skip_log)
        if image is None:
            return None
        out = transformed_image(self.transform, image)
        return {"image": out,
                "label": int(self.labels[index]),
                "meta": {"image_id": index, "source": self.source, "orig_size": image.shape[:2],
                         "scale": out.shape[1] / image.shape[0],
                         "file_name": self.files[index].relative_to(self.split_dir).as_posix()}}
