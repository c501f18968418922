"""The Python API: ``model = fourm21.load(path)``; ``model.predict(images)``; ``model.predict_video(path)``.

``path`` is a Lightning checkpoint (``.ckpt``, read with ``weights_only=True``) or a directory
written by ``fourm21-export`` (safetensors: no pickle, no Lightning; ONNX: run by ONNX Runtime;
torch.export: a ``.pt2`` program). Predictions are plain dicts of tensors per image, in the
original image's pixels, decoded by the same heads' ``postprocess`` whatever ran the network.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from PIL import Image

from fourm21.data.geometry import unletterbox
from fourm21.data.images import read_image, to_rgb
from fourm21.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from fourm21.data.video import VideoReader, VideoSource
from fourm21.engine.checkpoints import load_checkpoint, load_state
from fourm21.errors import CheckpointError, ConfigError
from fourm21.models.mask_paste import paste_masks
from fourm21.models.multitask import MultiTaskNet, build_model

ImageLike = str | Path | Image.Image | np.ndarray


class Fourm21Model:
    """A trained multitask network for inference (eval mode, no gradients)."""

    def __init__(self, net: MultiTaskNet, model_config: dict, meta: dict, device: str | torch.device = "cpu",
                 runner: Callable[[torch.Tensor], dict[str, dict[str, torch.Tensor]]] | None = None) -> None:
        # ``runner`` replaces the PyTorch forward (an ONNX Runtime session, a torch.export program);
        # decoding always goes through the heads' postprocess.
        self.runner = runner
        self.net = net.eval()
        self.model_config = model_config
        self.meta = dict(meta)
        self.device = torch.device(device)
        self.net.to(self.device)

    @property
    def img_size(self) -> int:
        return int(self.meta.get("img_size") or self.model_config.get("backbone", {}).get("img_size") or 640)

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
        self.net.to(self.device)
        return self

    def network_input(self, batch: torch.Tensor) -> torch.Tensor:
        """``batch`` in the memory layout the PyTorch forward runs fastest with: channels-last on a CPU,
        where oneDNN convolutions then skip their layout reorders (lite's eager forward: 10-25 % faster
        on the 2-core dev CPU; the default and ViT models: unchanged). Values are the same."""
        if self.runner is None and batch.device.type == "cpu" and batch.dim() == 4:
            return batch.contiguous(memory_format=torch.channels_last)
        return batch

    def set_thresholds(self, score_thr: float | None = None, iou_thr: float | None = None,
                       max_det: int | None = None, sem_label_stride: int | None = None) -> None:
        """Change the decoding settings: the detection head's keys of the same names, and the semantic
        head's ``label_stride`` (argmax on an (H/s, W/s) grid: faster on CPUs, coarser boundaries).
        ``None`` keeps the model's value."""
        if sem_label_stride is not None and "sem" in self.net.heads:
            set_sem_label_stride(self.net, sem_label_stride)
        det = self.net.heads["det"] if "det" in self.net.heads else None  # noqa: SIM401 - ModuleDict has no get
        if det is None:
            return
        for key, value in (("score_thr", score_thr), ("iou_thr", iou_thr), ("max_det", max_det)):
            if value is not None:
                setattr(det, key, value)

    def preprocess(self, image: ImageLike, img_size: int | None = None) -> tuple[torch.Tensor, dict]:
        """One image -> normalised letterboxed (3, S, S) tensor and the meta that maps predictions back."""
        name = None
        if isinstance(image, str | Path):
            name = str(image)
            arr = read_image(image)
        elif isinstance(image, Image.Image):
            arr = to_rgb(image)
        else:
            arr = np.asarray(image)
            if arr.ndim == 2:
                arr = np.repeat(arr[..., None], 3, axis=2)
            arr = arr[..., :3].astype(np.uint8)
        size = img_size or self.img_size
        t = A.Compose([A.LongestMaxSize(max_size=size, interpolation=cv2.INTER_LINEAR),
                       A.PadIfNeeded(size, size, position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=114),
                       A.Normalize(mean=tuple(self.meta.get("mean", IMAGENET_MEAN)),
                                   std=tuple(self.meta.get("std", IMAGENET_STD)))])
        out = t(image=arr)["image"]
        h, w = arr.shape[:2]
        return torch.from_numpy(out.transpose(2, 0, 1).copy()), {"orig_size": (h, w), "scale": size / max(h, w),
                                                                  "file_name": name}

    def predict(self, images: ImageLike | Sequence[ImageLike], batch_size: int = 16,
                img_size: int | None = None, captions: Sequence[str] | None = None) -> list[dict[str, torch.Tensor]]:
        """Predictions per image: boxes (N, 4) xyxy, scores, labels, masks (N, H, W) bool, semantic (H, W),
        class_probs (K,), class_label, class_topk, attr.<group>.probs / .label, label_probs / label_set
        — whatever the model's heads produce. ``captions`` (one per image) feed a caption-fused head."""
        if isinstance(images, str | Path | Image.Image | np.ndarray):
            images = [images]
        if captions is not None and len(captions) != len(images):
            raise ValueError(f"{len(captions)} captions for {len(images)} images")
        results: list[dict[str, torch.Tensor]] = []
        for start in range(0, len(images), batch_size):
            texts = captions[start:start + batch_size] if captions is not None else None
            results += self._predict_batch(images[start:start + batch_size], img_size, texts)
        return results

    def predict_video(self, source: VideoSource, batch_size: int = 1, img_size: int | None = None,
                      max_frames: int | None = None) -> VideoPredictions:
        """Predictions frame by frame for a video file or a camera (``0`` = the first webcam).

        Returns a lazy iterator of ``FramePrediction`` (index, time_s, image, pred as ``predict`` gives):
        ``batch_size`` frames are decoded and run at a time, so a video of any length never sits in
        memory. The source is opened here: a missing file, a file that is not a video or an absent
        camera raises ``DatasetError`` at once. ``max_frames`` stops a camera (or a long file) early."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return VideoPredictions(self, VideoReader(source, max_frames), batch_size, img_size)

    @torch.no_grad()
    def _predict_batch(self, images: Sequence[ImageLike], img_size: int | None = None,
                       captions: Sequence[str] | None = None) -> list[dict[str, torch.Tensor]]:
        """One forward pass over ``images``; predictions in each image's original pixels."""
        chunk = [self.preprocess(im, img_size) for im in images]
        batch = torch.stack([c[0] for c in chunk]).to(self.device)
        tokens = None
        if captions is not None and "mlc" in self.net.heads:
            from fourm21.data.text import tokenize
            buckets = self.model_config["heads"]["mlc"].get("text", {}).get("num_buckets", 4096)
            tokens = torch.stack([tokenize(c, buckets) for c in captions]).to(self.device)
        outputs = self.runner(batch) if self.runner is not None else self.net(self.network_input(batch), tokens)
        # an end-to-end ONNX graph returns decoded predictions already
        preds = outputs if isinstance(outputs, list) else self.net.postprocess(outputs, tuple(batch.shape[-2:]))
        mask_thr = self.net.heads["inst"].mask_thr if "inst" in self.net.heads else 0.5
        return [unletterbox({k: v.cpu() for k, v in p.items() if k != "locations"}, meta["orig_size"],
                            meta["scale"], mask_thr) for p, (_, meta) in zip(preds, chunk)]


@dataclass(frozen=True)
class FramePrediction:
    """One video frame and its predictions: ``index`` in the stream, ``time_s`` seconds from its start,
    ``image`` (H, W, 3) uint8 RGB and ``pred`` (the dict ``Fourm21Model.predict`` gives per image)."""

    index: int
    time_s: float
    image: np.ndarray
    pred: dict[str, torch.Tensor]


class VideoPredictions(Iterator[FramePrediction]):
    """What ``predict_video`` returns: an iterator of ``FramePrediction`` that reads the source only as far
    as it is consumed. ``name``, ``fps`` (0 if unknown), ``frame_count`` (None for a camera), ``width``,
    ``height`` describe the source; ``close()`` (or a ``with`` block) releases it early."""

    def __init__(self, model: Fourm21Model, reader: VideoReader, batch_size: int = 1,
                 img_size: int | None = None) -> None:
        self.reader = reader
        self.name, self.fps, self.frame_count = reader.name, reader.fps, reader.frame_count
        self.width, self.height = reader.width, reader.height
        self._frames = iter(reader)
        self._model, self._batch_size, self._img_size = model, batch_size, img_size
        self._ready: list[FramePrediction] = []

    def __next__(self) -> FramePrediction:
        if not self._ready:
            frames = list(itertools.islice(self._frames, self._batch_size))
            if not frames:
                raise StopIteration
            preds = self._model._predict_batch([f.image for f in frames], self._img_size)
            self._ready = [FramePrediction(f.index, f.time_s, f.image, p) for f, p in zip(frames, preds)][::-1]
        return self._ready.pop()

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> VideoPredictions:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load(path: str | Path, device: str | torch.device = "cpu") -> Fourm21Model:
    """Load a ``.ckpt`` or an exported safetensors directory for inference."""
    path = Path(path)
    if path.is_dir():
        return _load_exported(path, device)
    net, hp = load_checkpoint(path)
    return Fourm21Model(net, hp["model"], hp.get("meta") or {}, device)


def _load_exported(directory: Path, device: str | torch.device) -> Fourm21Model:
    """A directory from ``fourm21-export``: config.yaml + classes.json + one of model.safetensors,
    model.onnx (run with ONNX Runtime) or model.pt2 (a torch.export program)."""
    from omegaconf import OmegaConf
    from safetensors.torch import load_file

    config = directory / "config.yaml"
    if not config.is_file():
        raise CheckpointError(f"exported model directory {directory} lacks config.yaml")
    cfg = OmegaConf.to_container(OmegaConf.load(config), resolve=True)
    net = build_model(cfg["model"])
    meta = cfg.get("meta") or {}
    classes = directory / "classes.json"
    if classes.is_file():
        meta.update(json.loads(classes.read_text()))
    runner = None
    if (directory / "model.safetensors").is_file():
        load_state(net, load_file(str(directory / "model.safetensors")), directory / "model.safetensors")
    elif (directory / "model.onnx").is_file():
        runner = _onnx_runner(net, directory / "model.onnx", device)
    elif (directory / "model.pt2").is_file():
        runner = _torch_export_runner(net, directory / "model.pt2", device)
    else:
        raise CheckpointError(f"exported model directory {directory} lacks model.safetensors, model.onnx or model.pt2")
    return Fourm21Model(net, cfg["model"], meta, device, runner)


def _onnx_runner(net: MultiTaskNet, path: Path, device: str | torch.device) -> Callable:
    import onnxruntime as ort

    from fourm21.export.raw_outputs import restore_outputs

    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if str(device).startswith("cuda") else \
        ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(path), providers=providers)
    names = [o.name for o in session.get_outputs()]

    def run(images: torch.Tensor) -> dict[str, dict[str, torch.Tensor]] | list[dict[str, torch.Tensor]]:
        arrays = [torch.from_numpy(a) for a in session.run(names, {"images": images.detach().cpu().numpy()})]
        if "det_batch_index" in names:
            return _end2end_predictions(net, dict(zip(names, arrays)), images.shape[0], tuple(images.shape[-2:]))
        return restore_outputs(net, names, arrays, tuple(images.shape[-2:]))
    return run


def set_sem_label_stride(net: MultiTaskNet, stride: int) -> None:
    """The semantic head's ``label_stride`` at decode time (an ONNX end-to-end graph keeps its own)."""
    if int(stride) < 1:
        raise ConfigError(f"sem_label_stride must be >= 1, got {stride}")
    net.heads["sem"].label_stride = int(stride)


def _end2end_predictions(net: MultiTaskNet, out: dict[str, torch.Tensor], batch: int,
                         size: tuple[int, int]) -> list[dict[str, torch.Tensor]]:
    """Per-image prediction dicts (as ``postprocess`` gives) from an end-to-end graph's flat outputs."""
    preds: list[dict[str, torch.Tensor]] = []
    det = net.heads["det"]
    for i in range(batch):
        # the graph's own threshold is baked in; a higher one set with set_thresholds still applies
        sel = (out["det_batch_index"] == i) & (out["det_scores"] > det.score_thr)
        order = out["det_scores"][sel].argsort(descending=True)[: det.max_det]
        p = {"boxes": out["det_boxes"][sel][order], "scores": out["det_scores"][sel][order],
             "labels": out["det_labels"][sel][order].long()}
        if "det_masks" in out:  # probabilities at prototype resolution -> logits, pasted as the head does
            logits = torch.logit(out["det_masks"][sel][order].float(), eps=1e-6)
            p["mask_logits"] = logits
            p["masks"] = paste_masks(logits, p["boxes"], size, threshold=net.heads["inst"].mask_thr)
        if "cls_probs" in out:
            probs = out["cls_probs"][i]
            k = min(net.heads["cls"].topk, len(probs))
            top_p, top_i = probs.topk(k)
            p.update(class_probs=probs, class_label=top_i[0], class_topk=top_i, class_topk_probs=top_p)
        if "sem_labels" in out:
            p["semantic"] = out["sem_labels"][i].long()
        preds.append(p)
    return preds


def _torch_export_runner(net: MultiTaskNet, path: Path, device: str | torch.device) -> Callable:
    from fourm21.export.raw_outputs import output_names, restore_outputs

    program = torch.export.load(str(path)).module().to(device)
    names = output_names(net)

    def run(images: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        with torch.no_grad():
            outs = [t.cpu() for t in program(images)]
        return restore_outputs(net, names, outs, tuple(images.shape[-2:]))
    return run
