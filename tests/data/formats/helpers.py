"""Tiny images and the COCO read-back the format tests share."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from fourm21.data.coco import CocoDataset
from fourm21.data.transforms import build_dense_transform

SIZE = 64  # images are at most SIZE wide: the letterbox leaves their pixels where they are (padding right/bottom)


def write_image(path: Path, w: int = SIZE, h: int = 48, value: int = 0) -> Path:
    """A small RGB image with some structure, any format PIL writes from the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def read_back(out: Path, split: str = "train", semantic: bool = False) -> CocoDataset:
    """The converted split through the project's COCO reader, at its own resolution."""
    return CocoDataset(out / f"{split}2017", out / "annotations" / f"instances_{split}2017.json",
                       transform=build_dense_transform(SIZE, train=False),
                       semantic_dir=out / f"semantic_{split}2017" if semantic else None)


def sample_of(ds: CocoDataset, file_name: str) -> dict:
    """The Sample of the image named ``file_name``."""
    index = next(i for i, image_id in enumerate(ds.ids) if ds.coco.imgs[image_id]["file_name"] == file_name)
    return ds[index]


def run_convert(args: list[str], cwd: Path, here: bool = False) -> subprocess.CompletedProcess:
    """``fourm21-convert`` as a user runs it (the module, until the console script is installed); ``here``:
    in this process (``tests.conftest.run_cli_here``, for runs that stop at an error)."""
    if here:
        from tests.conftest import run_cli_here

        return run_cli_here("fourm21-convert", [*args, f"hydra.run.dir={cwd / 'run'}"], cwd)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "fourm21.engine.convert", *args, f"hydra.run.dir={cwd / 'run'}"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
