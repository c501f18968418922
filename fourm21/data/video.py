"""Reading videos and cameras with OpenCV, one frame at a time, and sorting a source into images and videos."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# FFmpeg's own log ("moov atom not found") would precede our one-line error; read before the first capture.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from fourm21.data.images import IMAGE_SUFFIXES  # noqa: E402
from fourm21.errors import DatasetError  # noqa: E402

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"}

VideoSource = str | Path | int


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its index in the stream, its time in seconds and the (H, W, 3) uint8 RGB pixels."""

    index: int
    time_s: float
    image: np.ndarray


def camera_index(source: VideoSource) -> int | None:
    """The camera index ``source`` names (``0``, ``"0"``), or None for a path."""
    if isinstance(source, bool):
        return None
    if isinstance(source, int):
        return source
    if isinstance(source, str) and source.isdigit() and not Path(source).exists():
        return int(source)
    return None


def list_media(source: VideoSource) -> tuple[list[Path], list[Path | int]]:
    """(images, videos) of a camera index, a file or a folder (recursively, sorted). A file that is not a
    video by its suffix counts as an image, so a bad one is reported by the image reader."""
    cam = camera_index(source)
    if cam is not None:
        return [], [cam]
    source = Path(source)
    if source.is_file():
        return ([], [source]) if source.suffix.lower() in VIDEO_SUFFIXES else ([source], [])
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file())
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        videos: list[Path | int] = [p for p in files if p.suffix.lower() in VIDEO_SUFFIXES]
        if not images and not videos:
            raise DatasetError(f"no images or videos ({', '.join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES))}) "
                               f"under {source}")
        return images, videos
    raise DatasetError(f"source not found: {source}")


class VideoReader:
    """The frames of a video file or a camera, decoded on demand; no frame is kept after it is handed out.

    Opening reads the first frame, so a missing camera or a file that is not a video fails here with a
    ``DatasetError`` naming it. Iterate once; ``frames_read`` counts the frames decoded so far."""

    def __init__(self, source: VideoSource, max_frames: int | None = None) -> None:
        cam = camera_index(source)
        self.is_camera = cam is not None
        self.name = f"camera{cam}" if cam is not None else Path(source).name
        self.max_frames = max_frames
        if cam is None and not Path(source).is_file():
            raise DatasetError(f"video not found: {source}")
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # our message replaces OpenCV's warnings
        try:
            self._cap = cv2.VideoCapture(cam if cam is not None else str(source))
            ok, first = self._cap.read() if self._cap.isOpened() else (False, None)
        finally:
            cv2.utils.logging.setLogLevel(level)
        if not ok:
            self._cap.release()
            raise DatasetError(f"no camera at index {cam} (OpenCV cannot open it)" if cam is not None else
                               f"cannot read video {source}: not a video OpenCV can decode")
        self._first: np.ndarray | None = first
        self.frames_read = 1
        self.height, self.width = first.shape[:2]
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else 0.0  # 0 when the container does not say
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_count = None if self.is_camera or count <= 0 else count  # an estimate for some containers
        if max_frames is not None and self.frame_count is not None:
            self.frame_count = min(self.frame_count, max_frames)
        self._start = time.monotonic()

    def _time_s(self, index: int) -> float:
        if self.is_camera:
            return time.monotonic() - self._start
        msec = self._cap.get(cv2.CAP_PROP_POS_MSEC)  # of the frame just read; honours variable frame rates
        if msec > 0 or index == 0:
            return msec / 1000.0
        return index / self.fps if self.fps else 0.0

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        while self.max_frames is None or index < self.max_frames:
            if self._first is not None:
                bgr, self._first = self._first, None
            else:
                ok, bgr = self._cap.read()
                if not ok:
                    break
                self.frames_read += 1
            yield Frame(index, self._time_s(index), cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            index += 1
        self.close()

    def close(self) -> None:
        self._cap.release()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
