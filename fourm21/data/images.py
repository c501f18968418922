"""Reading user images: any PIL format, EXIF rotation applied, grayscale / palette / RGBA / 16-bit -> 8-bit RGB.

A file that cannot be used (missing, empty, truncated, not an image, too large to decode) raises a
``BadImageError`` naming it. Data sets follow ``data.on_bad_image``: ``error`` stops with that
message, ``skip`` logs the file and reason, leaves the image out, and records it in a ``SkipLog``
(a small file, so skips made in DataLoader worker processes reach the report).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import os
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fourm21.errors import BadImageError, ConfigError, DatasetError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
BAD_IMAGE_POLICIES = ("skip", "error")

log = logging.getLogger(__name__)


def to_rgb(im: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 from any PIL image; 16-bit and float images (in [0, 1] or [0, 255]) are scaled to 8 bits."""
    # a malformed EXIF block: keep the image as stored
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.nan_to_num(np.asarray(im, dtype=np.float32))
        peak = float(arr.max()) if arr.size else 0.0
        # 16-bit range, else float images in [0, 1] (the usual convention), else the 8-bit range
        hi = 65535.0 if im.mode.startswith("I;16") or peak > 255 else 1.0 if im.mode == "F" and peak <= 1 else 255.0
        arr = np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (114, 114, 114, 255))  # the letterbox grey
        im = Image.alpha_composite(background, im)
    return np.asarray(im.convert("RGB"))


def _bad(path: Path, reason: str) -> BadImageError:
    return BadImageError(f"{path}: {reason}", path=str(path), reason=reason)


def read_image(path: str | Path, min_size: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB; a BadImageError naming the file when it cannot be used.

    ``min_size`` (h, w): a JPEG may be decoded at 1/2, 1/4 or 1/8 of its size (PIL's ``draft``: scaling
    in the DCT, about 2x faster at half size) as long as both sides stay >= ``min_size`` (as displayed,
    after EXIF rotation); the sides are then ceil(side / k).
    """
    path = Path(path)
    if not path.is_file():
        raise _bad(path, "image not found" if not path.exists() else "not a file")
    if path.stat().st_size == 0:
        raise _bad(path, "empty file (0 bytes)")
    try:
        with Image.open(path) as im:
            if min_size is not None and im.format == "JPEG":
                mh, mw = min_size
                if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # stored rotated by 90 degrees
                    mh, mw = mw, mh
                im.draft("RGB", (mw, mh))
            im.load()
            return to_rgb(im)
    except UnidentifiedImageError:
        raise _bad(path, "not an image PIL can read") from None
    except Image.DecompressionBombError as e:
        raise _bad(path, f"image too large to decode safely ({e}); shrink it, or raise "
                         f"PIL.Image.MAX_IMAGE_PIXELS if it is trusted") from None
    except (OSError, ValueError, SyntaxError, MemoryError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "truncated" in reason:
            reason = f"truncated or cut-short file ({reason})"
        raise _bad(path, f"cannot decode image: {reason}") from None


def check_policy(policy: str, key: str = "data.on_bad_image") -> str:
    """``policy`` if it is one of BAD_IMAGE_POLICIES, else a ConfigError naming ``key``."""
    if policy not in BAD_IMAGE_POLICIES:
        raise ConfigError(f"{key}: must be one of {list(BAD_IMAGE_POLICIES)}, got {policy!r}")
    return policy


# One id per run, shared with every process the run starts (DataLoader workers, DDP ranks) through the
# environment: the processes of one run write the skips of one data set to the same file.
SESSION_ENV = "FOURM21_SKIP_SESSION"
_SESSION = os.environ.setdefault(SESSION_ENV, f"{os.getpid()}-{uuid.uuid4().hex[:8]}")


class SkipLog:
    """The images a data set left out under ``on_bad_image=skip``: ``{file: reason}``.

    Records go to a file named by the run (``SESSION_ENV``) and the data (``key``, e.g. the annotation
    file), so that records made in DataLoader workers (forked or spawned) and in the other DDP ranks
    are seen by ``entries()`` in the process that writes the report. The process that started the run
    removes the files when it exits.
    """

    def __init__(self, source: str, key: str = "") -> None:
        self.source = source
        digest = hashlib.sha1(f"{source}|{key or uuid.uuid4().hex}".encode()).hexdigest()[:12]
        self.path = Path(tempfile.gettempdir()) / f"fourm21-skipped-{_SESSION}-{digest}.tsv"
        self._warned: set[str] = set()

    def add(self, path: str | Path, reason: str) -> None:
        """Record one skip; the first skip of a file in a process is logged as a warning."""
        file = str(path)
        reason = " ".join(reason.split())
        if file not in self._warned:
            self._warned.add(file)
            log.warning("skipped image %s: %s (data.on_bad_image=skip)", file, reason)
        with open(self.path, "a", encoding="utf-8") as f:  # one short append: atomic between processes
            f.write(f"{file}\t{reason}\n")

    def entries(self) -> dict[str, str]:
        """``{file: reason}`` of every image skipped so far, each file once."""
        if not self.path.is_file():
            return {}
        out: dict[str, str] = {}
        for line in self.path.read_text(encoding="utf-8").splitlines():
            file, _, reason = line.partition("\t")
            out.setdefault(file, reason)
        return out

    def __len__(self) -> int:
        return len(self.entries())


@atexit.register
def _remove_session_files() -> None:
    if _SESSION.split("-")[0] == str(os.getpid()):
        for f in Path(tempfile.gettempdir()).glob(f"fourm21-skipped-{_SESSION}-*.tsv"):
            f.unlink(missing_ok=True)


def read_image_or_skip(path: str | Path, policy: str, skips: SkipLog,
                       min_size: tuple[int, int] | None = None) -> np.ndarray | None:
    """``read_image``, or None (logged and recorded in ``skips``) for a bad image under ``policy='skip'``."""
    try:
        return read_image(path, min_size)
    except BadImageError as e:
        if policy != "skip":
            raise
        skips.add(e.path or path, e.reason or str(e))
        return None


def skipped_images(datasets: Iterable[object]) -> dict[str, str]:
    """``{file: reason}`` over the data sets that keep a ``skip_log`` (the others are ignored)."""
    out: dict[str, str] = {}
    for ds in datasets:
        skips = getattr(ds, "skip_log", None)
        if isinstance(skips, SkipLog):
            for file, reason in skips.entries().items():
                out.setdefault(file, reason)
    return out


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
