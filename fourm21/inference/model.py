"""A trained model for inference: preprocess, run (any runner), decode, map back to the original image.

``Fourm21Model`` is what ``fourm21.load`` returns. Whatever runs the network (PyTorch, ONNX Runtime, a
``.pt2`` program), the predictions come from ``fourm21.inference.decode`` with the model's
``DecodeSettings``, and in the original image's pixels.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fourm21.data.video import VideoReader, VideoSource
from fourm21.errors import ConfigError
from fourm21.inference.decode import DecodeSettings, decode, split_images
from fourm21.inference.letterbox import unletterbox
from fourm21.inference.preprocess import ImageLike, Letterbox
from fourm21.inference.runners import Runner, TorchRunner
from fourm21.inference.tracking import Tracker
from fourm21.models.multitask import MultiTaskNet


class Fourm21Model:
    """A trained multitask network for inference (eval mode, no gradients).

    ``net`` is the PyTorch network when there is one (a checkpoint, a safetensors export); an ONNX or
    ``.pt2`` export runs without it (``net`` is None) and decodes with the settings its config holds."""

    def __init__(self, runner: Runner, model_config: dict, meta: dict, settings: DecodeSettings,
                 net: MultiTaskNet | None = None, device: str | torch.device = "cpu") -> None:
        self.runner = runner
        self.net = net.eval() if net is not None else None
        self.model_config = model_config
        self.meta = dict(meta)
        self.settings = settings
        self.device = torch.device(device)
        if self.net is not None:
            self.net.to(self.device)

    @classmethod
    def from_net(cls, net: MultiTaskNet, model_config: dict, meta: dict,
                 device: str | torch.device = "cpu") -> Fourm21Model:
        return cls(TorchRunner(net), model_config, meta, DecodeSettings.from_net(net), net, device)

    @property
    def heads(self) -> list[str]:
        return list(self.settings.heads)

    @property
    def img_size(self) -> int:
        size = self.meta.get("img_size") or (self.model_config.get("backbone") or {}).get("img_size")
        if not size:
            raise ConfigError("img_size: the model records no input size (meta.img_size); pass img_size=")
        return int(size)

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("class_names") or [])

    @property
    def image_class_names(self) -> list[str]:
        return list(self.meta.get("image_class_names") or [])

    @property
    def attribute_classes(self) -> dict[str, list[str]]:
        classes = self.meta.get("attribute_classes")
        return dict(classes) if isinstance(classes, dict) else {}

    @property
    def label_names(self) -> list[str]:
        return list(self.meta.get("label_names") or [])

    def to(self, device: str | torch.device) -> Fourm21Model:
        self.device = torch.device(device)
        if self.net is not None:
            self.net.to(self.device)
        return self

    def network_input(self, batch: torch.Tensor) -> torch.Tensor:
        """``batch`` in the memory layout the runner takes fastest (channels-last for PyTorch on a CPU)."""
        return self.runner.network_input(batch) if isinstance(self.runner, TorchRunner) else batch

    def decode(self, outputs: Any, batch: int, size: tuple[int, int], settings: DecodeSettings | None = None
               ) -> list[dict[str, torch.Tensor]]:
        """The runner's ``outputs`` for ``batch`` images of ``size`` -> one prediction dict per image on the network
        input: split per image when the graph decoded inside (end-to-end), else decoded here."""
        settings = settings or self.settings
        return split_images(outputs, batch, size, settings) if self.runner.decoded else \
            decode(outputs, size, settings)

    def set_thresholds(self, **values: float | int | None) -> None:
        """Change the decoding settings a head's task lets users set (``Task.overrides``): ``score_thr``,
        ``iou_thr``, ``max_det`` for detections, ``sem_label_stride`` (argmax on an (H/s, W/s) grid: faster
        on CPUs, coarser boundaries) ...; ``None`` keeps the model's value and a key no head takes changes
        nothing. An end-to-end ONNX graph keeps the NMS, ``max_det`` and ``label_stride`` it was exported
        with; higher thresholds still apply to its output."""
        self.settings = self.settings.with_overrides(**values)

    def preprocess(self, image: ImageLike, img_size: int | None = None) -> tuple[torch.Tensor, dict]:
        """One image -> letterboxed (3, S, S) uint8 pixels and the meta that maps predictions back."""
        return self._letterbox(img_size or self.img_size)(image)

    def _letterbox(self, size: int) -> Letterbox:
        cached = getattr(self, "_letterbox_cache", None)
        if cached is None or cached.img_size != size:
            cached = Letterbox(size)
            self._letterbox_cache = cached
        return cached

    def predict(self, images: ImageLike | Sequence[ImageLike], batch_size: int = 16,
                img_size: int | None = None, captions: Sequence[str] | None = None,
                output: str = "dict") -> list[Any]:
        """Predictions per image: boxes (N, 4) xyxy, scores, labels, masks (N, H, W) bool, semantic (H, W),
        class_probs (K,), class_label, class_topk, attr.<group>.probs / .label, label_probs / label_set
        — whatever the model's heads produce. ``captions`` (one per image) feed a caption-fused head.
        ``output="supervision"``: one ``supervision.Detections`` per image instead (``fourm21.api.to_supervision``)."""
        if output not in ("dict", "supervision"):
            raise ConfigError(f"output: 'dict' or 'supervision', got {output!r}")
        if isinstance(images, str | Path | Image.Image | np.ndarray):
            images = [images]
        if captions is not None and len(captions) != len(images):
            raise ValueError(f"{len(captions)} captions for {len(images)} images")
        results: list[dict[str, torch.Tensor]] = []
        for start in range(0, len(images), batch_size):
            texts = captions[start:start + batch_size] if captions is not None else None
            results += self._predict_batch(images[start:start + batch_size], img_size, texts)
        if output == "supervision":
            from fourm21.inference.supervision import to_detections
            return [to_detections(p, self.meta, self.settings) for p in results]
        return results

    def predict_video(self, source: VideoSource, batch_size: int = 1, img_size: int | None = None,
                      max_frames: int | None = None, tracker: str | Tracker | None = None) -> VideoPredictions:
        """Predictions frame by frame for a video file or a camera (``0`` = the first webcam).

        Returns a lazy iterator of ``FramePrediction`` (index, time_s, image, pred as ``predict`` gives):
        ``batch_size`` frames are decoded and run at a time, so a video of any length never sits in
        memory. The source is opened here: a missing file, a file that is not a video or an absent
        camera raises ``DatasetError`` at once. ``max_frames`` stops a camera (or a long file) early.

        ``tracker`` (a name such as ``"bytetrack"`` with the library's settings, or a ``Tracker``) follows
        objects across frames: each frame's detections are then the tracked ones, with ``pred["track_ids"]``
        (N,) int64, ids from 0 for this video. None: no tracking."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(tracker, str):
            tracker = Tracker(tracker)
        elif tracker is not None and not isinstance(tracker, Tracker):
            raise TypeError(f"tracker must be a tracker name, a Tracker or None, got {type(tracker).__name__}")
        return VideoPredictions(self, VideoReader(source, max_frames), batch_size, img_size, tracker)

    @torch.no_grad()
    def _predict_batch(self, images: Sequence[ImageLike], img_size: int | None = None,
                       captions: Sequence[str] | None = None) -> list[dict[str, torch.Tensor]]:
        """One forward pass over ``images``; predictions in each image's original pixels."""
        chunk = [self.preprocess(im, img_size) for im in images]
        batch = torch.stack([c[0] for c in chunk]).to(self.device)
        tokens = None
        buckets = next((b for name, task in self.settings.tasks.items()
                        if (b := task.text_buckets(self.model_config["heads"][name])) is not None), None)
        if captions is not None and buckets is not None:
            from fourm21.data.text import tokenize
            tokens = torch.stack([tokenize(c, buckets) for c in captions]).to(self.device)
        size = tuple(batch.shape[-2:])
        if self.net is None and not self.meta.get("input"):  # a graph exported before it normalised its input
            mean, std = (torch.tensor(self.meta[k], dtype=torch.float32).view(3, 1, 1) * 255.0 for k in ("mean", "std"))
            batch = (batch.float() - mean.to(batch.device)) / std.to(batch.device)
        outputs = self.runner(batch, tokens)
        preds = self.decode(outputs, len(chunk), size)
        return [unletterbox({k: v.cpu() for k, v in p.items() if k != "locations"}, meta["orig_size"],
                            meta["scale"], self.settings) for p, (_, meta) in zip(preds, chunk)]


@dataclass(frozen=True)
class FramePrediction:
    """One video frame and its predictions: ``index`` in the stream, ``time_s`` seconds from its start,
    ``image`` (H, W, 3) uint8 RGB and ``pred`` (the dict ``Fourm21Model.predict`` gives per image, plus
    ``track_ids`` (N,) when the video is tracked)."""

    index: int
    time_s: float
    image: np.ndarray
    pred: dict[str, torch.Tensor]


class VideoPredictions(Iterator[FramePrediction]):
    """What ``predict_video`` returns: an iterator of ``FramePrediction`` that reads the source only as far
    as it is consumed. ``name``, ``fps`` (0 if unknown), ``frame_count`` (None for a camera), ``width``,
    ``height`` describe the source; ``close()`` (or a ``with`` block) releases it early. With a
    ``tracker`` (restarted here, so one can serve video after video) each batch's predictions pass
    through it in frame order."""

    def __init__(self, model: Fourm21Model, reader: VideoReader, batch_size: int = 1,
                 img_size: int | None = None, tracker: Tracker | None = None) -> None:
        self.reader = reader
        self.name, self.fps, self.frame_count = reader.name, reader.fps, reader.frame_count
        self.width, self.height = reader.width, reader.height
        self._frames = iter(reader)
        self._model, self._batch_size, self._img_size = model, batch_size, img_size
        self._ready: list[FramePrediction] = []
        self.tracker = tracker
        if tracker is not None:
            tracker.start(reader.fps or 30.0)

    def __next__(self) -> FramePrediction:
        if not self._ready:
            frames = list(itertools.islice(self._frames, self._batch_size))
            if not frames:
                raise StopIteration
            preds = self._model._predict_batch([f.image for f in frames], self._img_size)
            if self.tracker is not None:
                preds = self.tracker(preds, [f.image for f in frames])
            self._ready = [FramePrediction(f.index, f.time_s, f.image, p) for f, p in zip(frames, preds)][::-1]
        return self._ready.pop()

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> VideoPredictions:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
