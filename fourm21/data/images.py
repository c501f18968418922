"""Reading user images: any PIL format, EXIF rotation applied, grayscale / palette / RGBA / 16-bit -> 8-bit RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from fourm21.errors import DatasetError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


def to_rgb(im: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 from any PIL image; 16-bit and float images are scaled to 8 bits."""
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float32)
        hi = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (114, 114, 114, 255))  # the letterbox grey
        im = Image.alpha_composite(background, im)
    return np.asarray(im.convert("RGB"))


def read_image(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB; a DatasetError naming the file when it cannot be decoded."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(im)
    except FileNotFoundError:
        raise DatasetError(f"image not found: {path}") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"cannot read image {path}: {e}") from None


def list_images(source: str | Path) -> list[Path]:
    """The image files of a file or a folder (recursively, sorted)."""
    source = Path(source)
    if source.is_file():
        return [source]
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DatasetError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {source}")
        return files
    raise DatasetError(f"source not found: {source}")
