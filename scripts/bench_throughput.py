"""GPU throughput of fourm21 (all heads) against its bare backbone and the models it would replace.

Prints one JSON line per measurement (model, mode, batch, image size, img/s, ms/batch, peak GPU
memory, parameters, FLOPs, MFU), then one ``summary`` line with the ratios and the targets of
issue 8. Every model is measured in the same run on the same device with random weights:

  fourm21      fourm21/configs/model/multitask.yaml with backbone convnext_tiny and all four heads (cls, det,
               inst, sem), 80 object classes, 1000 image classes, with the experiment=coco head levels
               for 640-px inputs (det and sem at strides 8-32; ``--overrides`` changes any key).
               infer = forward + ``fourm21.inference.decode`` (decoding, NMS, mask assembly at input size);
               train = forward + every head loss through ``head_losses`` and ``MultiTaskLoss`` (as the
               LightningModule does) + backward + AdamW step
  backbone     bare ``timm.create_model("convnext_tiny", features_only=True)``: the ceiling of a
               shared-backbone design (train loss: the mean of every level)
  classifier   timm convnext_tiny, 1000 classes (infer: softmax + top-5; train: cross-entropy)
  fcos         torchvision FCOS R50-FPN     } the three single-task models a user would otherwise run
  maskrcnn     torchvision Mask R-CNN R50-FPN } side by side; the summary combines them: 1 / sum(1 / img_s)
  yolov8m-seg  ultralytics YOLOv8m-seg from its yaml (infer: conv+BN fused as its predictor runs it,
               NMS + ``process_mask`` at input size; train: its own v8 segmentation loss); skipped with
               a message when ``ultralytics`` is not importable (it is no dependency of fourm21)

Training steps run AdamW on every parameter. The torchvision detectors resize to ``--size`` exactly
(min_size = max_size = size); their training uses their own losses on the same synthetic targets.
Inputs and targets are synthetic (``--objects`` ellipses per image, boxes, masks, semantic map, labels;
fourm21's batch goes through ``fourm21.data.collate.collate_samples``) and sit on the device before
timing, so no data loading is timed. Post-processing uses one ``--score-thr`` and ``--max-det`` for
every detector (pre-NMS candidates capped at 1000 where the model has such a cap). Random weights
decide how much post-processing work there is, so each infer line reports ``detections_per_img``.
Randomly initialised, fourm21, FCOS and Mask R-CNN keep ``max_det`` boxes and masks per image (the
worst case), whereas YOLOv8's initial class scores (~1e-5, its prior) keep nothing above 0.05, so it
then assembles no masks: its inference img/s is an upper bound and fourm21's ratio against it a lower
bound (``--score-thr 0`` makes YOLOv8 keep ``max_det`` from its top 1000 candidates as well).

FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over one eager inference pass of one image
(``gflops_per_img``); a training step counts as 3x that. MFU = achieved FLOP/s / ``--peak-tflops``
(default from the GPU name for bf16: H100 SXM and H200 989 dense TFLOP/s, H100 NVL 835, H100 PCIe
756, A100 312; null on a CPU, with fp32, or on another GPU unless given).

Targets (issue 8; H100, 640x640, bf16 autocast):
  inference, all heads  >= 1.0x YOLOv8m-seg img/s and >= 15 % MFU
  training              >= 1.3x YOLOv8m-seg img/s and >= 0.8x the bare backbone's training img/s
  peak training memory at batch 64, 640x640  <= 24 GB (1e9 bytes)

    python scripts/bench_throughput.py                                     # the issue's run: 640, batch 16 and 64
    python scripts/bench_throughput.py --batch 64 --channels-last --compile --json-out runs/throughput.jsonl
    python scripts/bench_throughput.py --models fourm21 backbone --overrides model.neck.channels=128
    python scripts/bench_throughput.py --device cpu --size 128 --batch 2 --iters 1 --warmup 1   # CPU smoke run

Exit status 1 when a model or a measurement failed for another reason than running out of memory
(its line then carries ``error``). YOLOv8m-seg needs ``ultralytics`` importable, e.g.
``pip install --target DIR ultralytics`` and ``PYTHONPATH=DIR``; it is built from its yaml, so
nothing is downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import io
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn
from torch.nn import functional as F

MODELS = ("fourm21", "backbone", "classifier", "fcos", "maskrcnn", "yolov8m-seg")
SINGLE_TASK = ("classifier", "fcos", "maskrcnn")
MODES = ("infer", "train")
BACKBONE = "convnext_tiny"
NUM_CLASSES = 80            # COCO object classes (fourm21, YOLOv8m-seg)
TV_NUM_CLASSES = 91         # torchvision's COCO detectors: 90 category ids + background
PRE_NMS_TOPK = 1000
# experiment=coco's head levels, which fourm21/configs/model/multitask.yaml recommends for 640-px inputs
COCO_640_OVERRIDES = ["model.heads.det.strides=[8,16,32]", "model.heads.det.range_mult=8.0",
                      "model.heads.sem.strides=[8,16,32]"]
# dense bf16 tensor-core TFLOP/s by GPU name (most specific first)
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0))
TARGETS = (  # (key, description, threshold, higher_is_better)
    ("infer_vs_yolov8m_seg", "inference img/s >= 1.0x YOLOv8m-seg", 1.0, True),
    ("infer_mfu", "inference MFU >= 15 %", 0.15, True),
    ("train_vs_yolov8m_seg", "training img/s >= 1.3x YOLOv8m-seg", 1.3, True),
    ("train_vs_backbone", "training img/s >= 0.8x the bare backbone's", 0.8, True),
    ("train_peak_mem_gb", "peak training memory at batch 64 <= 24 GB", 24.0, False),
)

Sample = dict[str, Any]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda, cuda:N or cpu (default: cuda when available)")
    p.add_argument("--size", type=int, default=640, help="square input side in pixels")
    p.add_argument("--batch", nargs="+", type=int, default=[16, 64], help="batch sizes")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before each measurement (>= 1)")
    p.add_argument("--iters", type=int, default=20, help="timed steps per measurement")
    p.add_argument("--precision", choices=("bf16", "fp32"), default=None,
                   help="bf16 autocast or fp32 (default: bf16 on CUDA, fp32 on the CPU)")
    p.add_argument("--channels-last", action="store_true", help="channels-last weights and inputs")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile each model's forward (eager, with a message, where that fails)")
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="models to measure")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="infer and/or train")
    p.add_argument("--num-image-classes", type=int, default=1000,
                   help="classes of fourm21's image-level head (1000, as the timm classifier)")
    p.add_argument("--overrides", nargs="*", default=[],
                   help="Hydra overrides of fourm21's config, e.g. model.neck.channels=128; they replace the "
                        f"defaults for the same keys ({' '.join(COCO_640_OVERRIDES)})")
    p.add_argument("--objects", type=int, default=7, help="synthetic objects per image (COCO's mean is ~7)")
    p.add_argument("--score-thr", type=float, default=0.05, help="detection score threshold of every detector")
    p.add_argument("--max-det", type=int, default=100, help="detections kept per image by every detector")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="device peak for MFU in TFLOP/s (default: by GPU name, bf16 dense; null otherwise)")
    p.add_argument("--json-out", type=Path, default=None, help="also append every JSON line to this file")
    args = p.parse_args(argv)
    if args.size < 32 or args.size % 32:
        p.error(f"--size must be a positive multiple of 32, got {args.size}")
    if min(args.batch) < 1 or min(args.iters, args.warmup, args.objects, args.max_det) < 1:
        p.error("--batch, --iters, --warmup, --objects and --max-det must be >= 1")
    user_keys = {o.split("=", 1)[0].lstrip("+~") for o in args.overrides}
    args.overrides = [o for o in COCO_640_OVERRIDES if o.split("=", 1)[0] not in user_keys] + args.overrides
    args.device = torch.device(args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible; use --device cpu")
    if args.precision is None:
        args.precision = "bf16" if args.device.type == "cuda" else "fp32"
    return args


class Emitter:
    """Writes each record as one JSON line to stdout and, optionally, to a file."""

    def __init__(self, path: Path | None) -> None:
        self.file: TextIO | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = path.open("a")

    def __call__(self, record: dict) -> None:
        line = json.dumps(record)
        print(line, flush=True)
        if self.file is not None:
            self.file.write(line + "\n")
            self.file.flush()


def note(message: str) -> None:
    print(f"bench_throughput: {message}", file=sys.stderr, flush=True)


def describe(error: BaseException) -> str:
    """``Type: first line of the message``, at most 300 characters."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]


# ----------------------------------------------------------------------------------------- device
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_tflops(args: argparse.Namespace) -> float | None:
    if args.peak_tflops is not None:
        return args.peak_tflops
    if args.device.type != "cuda" or args.precision != "bf16":
        return None
    name = torch.cuda.get_device_name(args.device)
    return next((tf for key, tf in PEAK_BF16_TFLOPS if key in name), None)


def machine(args: argparse.Namespace) -> dict:
    import timm
    import torchvision

    info: dict[str, Any] = {"device": str(args.device), "torch": torch.__version__,
                            "torchvision": torchvision.__version__, "timm": timm.__version__,
                            "python": platform.python_version(), "logical_cpus": os.cpu_count()}
    with contextlib.suppress(OSError):
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                           if line.startswith("model name"))
    if args.device.type == "cuda":
        prop = torch.cuda.get_device_properties(args.device)
        info.update(gpu=prop.name, gpu_mem_gb=round(prop.total_memory / 1e9, 1), cuda=torch.version.cuda)
    else:
        info["threads"] = torch.get_num_threads()
    return info


def to_device(obj: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Moves every tensor of a (nested) batch; 4-D float tensors become channels-last if asked."""
    if isinstance(obj, torch.Tensor):
        obj = obj.to(device, non_blocking=True)
        if channels_last and obj.ndim == 4 and obj.is_floating_point():
            obj = obj.contiguous(memory_format=torch.channels_last)
        return obj
    if isinstance(obj, dict):
        return {k: to_device(v, device, channels_last) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_device(v, device, channels_last) for v in obj)
    return obj


# -------------------------------------------------------------------------------- synthetic data
def make_samples(n: int, size: int, objects: int, num_image_classes: int, seed: int = 0) -> list[Sample]:
    """``n`` Samples (the fourm21 contract) with ``objects`` ellipses each: image (3, S, S) ~ N(0, 1),
    label, boxes (N, 4) xyxy pixels, box_labels (N,) in [0, 80), masks (N, S, S) bool, semantic (S, S)."""
    g = torch.Generator().manual_seed(seed)
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    ys, xs = coords[None, :, None], coords[None, None, :]
    samples = []
    for i in range(n):
        wh = (torch.rand(objects, 2, generator=g) * 0.4 + 0.05) * size  # 5-45 % of the side
        ctr = wh / 2 + torch.rand(objects, 2, generator=g) * (size - wh)
        boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], 1)
        cx, cy, rx, ry = (t[:, None, None] for t in (ctr[:, 0], ctr[:, 1], wh[:, 0] / 2, wh[:, 1] / 2))
        masks = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1
        box_labels = torch.randint(0, NUM_CLASSES, (objects,), generator=g)
        semantic = torch.zeros(size, size, dtype=torch.long)
        for j in (wh[:, 0] * wh[:, 1]).argsort(descending=True).tolist():  # small objects drawn last, on top
            semantic[masks[j]] = int(box_labels[j]) + 1
        samples.append({"image": torch.randn(3, size, size, generator=g),
                        "label": int(torch.randint(0, num_image_classes, (1,), generator=g)),
                        "boxes": boxes, "box_labels": box_labels, "masks": masks, "semantic": semantic,
                        "meta": {"image_id": i, "source": "synthetic", "orig_size": (size, size)}})
    return samples


def unit_images(samples: list[Sample]) -> torch.Tensor:
    """(B, 3, S, S) in [0, 1], for the models that normalise inside (torchvision, ultralytics)."""
    return torch.stack([s["image"] for s in samples]).mul(0.25).add(0.5).clamp(0, 1)


# --------------------------------------------------------------------------------------- subjects
@dataclass
class Subject:
    """One model under test. ``fwd`` arguments are the (possibly compiled) module that runs the forward."""

    name: str
    arch: str
    net: nn.Module                                           # the module trained; params counted here
    make_batch: Callable[[list[Sample]], Any]                # samples -> inputs + targets (CPU)
    infer: Callable[[nn.Module, Any], int]                   # one inference pass -> detections kept
    train_loss: Callable[[nn.Module, Any], torch.Tensor]     # forward + all losses -> scalar
    infer_net: nn.Module | None = None                       # inference module when it differs (fused)
    detects: bool = False


def build_fourm21(args: argparse.Namespace) -> Subject:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from fourm21.data.collate import collate_samples
    from fourm21.engine.common import CONFIG_DIR
    from fourm21.inference.decode import DecodeSettings, decode
    from fourm21.losses.multitask import MultiTaskLoss
    from fourm21.models.multitask import build_model
    from fourm21.tasks import head_losses

    overrides = ["model=multitask", f"model.backbone.name={BACKBONE}", f"data.img_size={args.size}",
                 f"data.num_classes={NUM_CLASSES}", f"data.num_image_classes={args.num_image_classes}",
                 f"model.heads.det.score_thr={args.score_thr}", f"model.heads.det.max_det={args.max_det}",
                 f"model.heads.det.pre_nms_topk={PRE_NMS_TOPK}", *args.overrides]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    net = build_model(model_cfg)
    criterion = MultiTaskLoss(**OmegaConf.to_container(cfg.loss, resolve=True)).to(args.device)
    heads = ",".join(net.heads)
    settings = DecodeSettings.from_net(net)

    def infer(fwd: nn.Module, batch: dict) -> int:
        images = batch["image"]
        preds = decode(fwd(images), tuple(images.shape[-2:]), settings)
        return sum(len(p["boxes"]) for p in preds)

    def train_loss(fwd: nn.Module, batch: dict) -> torch.Tensor:
        total, _ = criterion(head_losses(net, fwd(batch["image"]), batch))
        return total

    det = model_cfg["heads"]["det"]
    return Subject("fourm21", f"fourm21 multitask, timm {BACKBONE}, neck {model_cfg['neck']['channels']} ch, heads "
                   f"{heads}, det strides {det['strides']}", net, collate_samples, infer, train_loss, detects=True)


def build_backbone(args: argparse.Namespace) -> Subject:
    import timm

    net = timm.create_model(BACKBONE, pretrained=False, features_only=True)

    def infer(fwd: nn.Module, batch: torch.Tensor) -> int:
        fwd(batch)
        return 0

    def train_loss(fwd: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return sum(f.float().mean() for f in fwd(batch))

    return Subject("backbone", f"timm {BACKBONE} features_only", net, lambda s: torch.stack([x["image"] for x in s]),
                   infer, train_loss)


def build_classifier(args: argparse.Namespace) -> Subject:
    import timm

    net = timm.create_model(BACKBONE, pretrained=False, num_classes=1000)

    def make_batch(samples: list[Sample]) -> dict:
        return {"image": torch.stack([s["image"] for s in samples]),
                "label": torch.tensor([s["label"] for s in samples]) % 1000}

    def infer(fwd: nn.Module, batch: dict) -> int:
        fwd(batch["image"]).float().softmax(-1).topk(5, dim=-1)
        return 0

    def train_loss(fwd: nn.Module, batch: dict) -> torch.Tensor:
        return F.cross_entropy(fwd(batch["image"]).float(), batch["label"])

    return Subject("classifier", f"timm {BACKBONE}, 1000 classes", net, make_batch, infer, train_loss)


def build_torchvision(name: str, args: argparse.Namespace) -> Subject:
    from torchvision.models import detection

    common = {"weights": None, "weights_backbone": None, "num_classes": TV_NUM_CLASSES,
              "min_size": args.size, "max_size": args.size}
    if name == "fcos":
        net = detection.fcos_resnet50_fpn(**common, score_thresh=args.score_thr, detections_per_img=args.max_det,
                                          topk_candidates=PRE_NMS_TOPK)
        arch = "torchvision fcos_resnet50_fpn"
    else:
        net = detection.maskrcnn_resnet50_fpn(**common, box_score_thresh=args.score_thr,
                                              box_detections_per_img=args.max_det)
        arch = "torchvision maskrcnn_resnet50_fpn"
    with_masks = name == "maskrcnn"

    def make_batch(samples: list[Sample]) -> dict:
        targets = []
        for s in samples:
            t = {"boxes": s["boxes"], "labels": s["box_labels"] + 1}
            if with_masks:
                t["masks"] = s["masks"].to(torch.uint8)
            targets.append(t)
        return {"images": list(unit_images(samples)), "targets": targets}

    def infer(fwd: nn.Module, batch: dict) -> int:
        return sum(len(o["boxes"]) for o in fwd(batch["images"]))

    def train_loss(fwd: nn.Module, batch: dict) -> torch.Tensor:
        return sum(fwd(batch["images"], batch["targets"]).values())

    return Subject(name, f"{arch}, {TV_NUM_CLASSES} classes, resized to {args.size}", net, make_batch, infer,
                   train_loss, detects=True)


def import_ultralytics() -> Any:
    """The ``ultralytics`` module, quietly (it announces a settings file on first import); None if absent."""
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolo_cfg_"))
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            import ultralytics
    except ImportError:
        return None
    return ultralytics


def build_yolo(args: argparse.Namespace) -> Subject:
    from ultralytics import YOLO
    from ultralytics.cfg import get_cfg
    from ultralytics.utils import DEFAULT_CFG
    from ultralytics.utils.ops import process_mask

    try:
        from ultralytics.utils.nms import non_max_suppression
    except ImportError:  # ultralytics < 8.3.150 keeps it in ops
        from ultralytics.utils.ops import non_max_suppression

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        net = YOLO("yolov8m-seg.yaml").model
        net.args = get_cfg(DEFAULT_CFG)  # loss gains (box, cls, dfl) and overlap_mask, as its trainer sets them
        fused = copy.deepcopy(net).fuse()
    mask_ratio = int(net.args.mask_ratio)
    nc = len(net.names)

    def make_batch(samples: list[Sample]) -> dict:
        """Its training format: boxes as normalised xywh; one overlap mask per image at 1/mask_ratio,
        value k = the image's k-th object, objects sorted by area (largest first), as its data loader does."""
        size = samples[0]["image"].shape[-1]
        batch_idx, cls, bboxes, masks = [], [], [], []
        for i, s in enumerate(samples):
            b = s["boxes"]
            order = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).argsort(descending=True)
            overlap = torch.zeros(size, size, dtype=torch.uint8)
            for k, j in enumerate(order.tolist()):
                overlap[s["masks"][j]] = k + 1
            masks.append(overlap[mask_ratio // 2::mask_ratio, mask_ratio // 2::mask_ratio])
            b = b[order] / size
            bboxes.append(torch.cat([(b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]], 1))
            cls.append(s["box_labels"][order].float()[:, None])
            batch_idx.append(torch.full((len(b),), float(i)))
        return {"img": unit_images(samples), "batch_idx": torch.cat(batch_idx), "cls": torch.cat(cls),
                "bboxes": torch.cat(bboxes), "masks": torch.stack(masks)}

    def infer(fwd: nn.Module, batch: dict) -> int:
        """Forward, NMS and mask assembly at input size: what its SegmentationPredictor does before Results."""
        img = batch["img"]
        out = fwd(img)
        if isinstance(out[0], tuple):  # >= 8.4: ((detections, protos), raw)
            pred, protos = out[0]
        else:  # 8.3: (detections, (feats, coefficients, protos))
            pred, protos = out[0], out[1][-1]
        dets = non_max_suppression(pred.float(), args.score_thr, 0.7, max_det=args.max_det, nc=nc,
                                   max_nms=PRE_NMS_TOPK)
        for det, proto in zip(dets, protos):
            if len(det):
                process_mask(proto.float(), det[:, 6:], det[:, :4], img.shape[2:], upsample=True)
        return sum(len(d) for d in dets)

    def train_loss(fwd: nn.Module, batch: dict) -> torch.Tensor:
        loss, _ = net.loss(batch, fwd(batch["img"]))
        return loss.sum()

    return Subject("yolov8m-seg", "ultralytics yolov8m-seg.yaml (infer: conv+BN fused)", net, make_batch, infer,
                   train_loss, infer_net=fused, detects=True)


def build(name: str, args: argparse.Namespace) -> Subject:
    torch.manual_seed(0)
    if name == "fourm21":
        return build_fourm21(args)
    if name == "backbone":
        return build_backbone(args)
    if name == "classifier":
        return build_classifier(args)
    if name in ("fcos", "maskrcnn"):
        return build_torchvision(name, args)
    return build_yolo(args)


# -------------------------------------------------------------------------------------- measuring
def autocast(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    if args.precision == "bf16":
        return torch.autocast(device_type=args.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def count_gflops(subject: Subject, module: nn.Module, args: argparse.Namespace) -> float | None:
    """GFLOPs of one eager inference pass over one image (FlopCounterMode: matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    batch = to_device(subject.make_batch(make_samples(1, args.size, args.objects, args.num_image_classes)),
                      args.device, args.channels_last)
    module.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            subject.infer(module, batch)
    except Exception as e:  # a counting failure must not cost the timing
        note(f"{subject.name}: FLOPs not counted ({describe(e)})")
        return None
    return counter.get_total_flops() / 1e9


def maybe_compile(module: nn.Module, args: argparse.Namespace) -> nn.Module:
    if not args.compile:
        return module
    try:
        return torch.compile(module)
    except Exception as e:
        note(f"torch.compile failed ({describe(e)}); running eager")
        return module


def timed_steps(step: Callable[[], object], args: argparse.Namespace) -> float:
    """Seconds for ``--iters`` steps after the rest of the ``--warmup`` untimed ones (the first ran already);
    the device is synchronised around them."""
    for _ in range(args.warmup - 1):
        step()
    sync(args.device)
    t0 = time.perf_counter()
    for _ in range(args.iters):
        step()
    sync(args.device)
    return time.perf_counter() - t0


def first_call_or_eager(subject: Subject, fwd: nn.Module, eager: nn.Module, step: Callable[[nn.Module], object]
                        ) -> tuple[nn.Module, str]:
    """Runs ``step(fwd)`` once (the first warm-up step); a compiled module that fails there is replaced by the
    eager one, with a message."""
    if fwd is eager:
        step(fwd)
        return fwd, "off"
    try:
        step(fwd)
        return fwd, "on"
    except torch.OutOfMemoryError:
        raise
    except Exception as e:
        note(f"{subject.name}: torch.compile failed ({describe(e)}); measuring it eager")
        torch._dynamo.reset()
        step(eager)
        return eager, "failed, eager"


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextlib.contextmanager
def fresh_memory(device: torch.device) -> Iterator[None]:
    """Frees what earlier measurements left and restarts the peak-memory count."""
    free_memory(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        yield
    finally:
        free_memory(device)


def measure(subject: Subject, mode: str, batch_size: int, args: argparse.Namespace) -> dict:
    """Times ``--iters`` steps of one mode at one batch size; returns the timing fields of a record."""
    samples = make_samples(batch_size, args.size, args.objects, args.num_image_classes, seed=batch_size)
    with fresh_memory(args.device):
        batch = to_device(subject.make_batch(samples), args.device, args.channels_last)
        run = run_infer if mode == "infer" else run_train
        seconds, fields = run(subject, batch, batch_size, args)
        peak = torch.cuda.max_memory_allocated(args.device) / 1e9 if args.device.type == "cuda" else None
    return {"img_s": round(batch_size * args.iters / seconds, 3), "ms_per_batch": round(seconds / args.iters * 1e3, 2),
            "peak_mem_gb": None if peak is None else round(peak, 2), **fields}


def run_infer(subject: Subject, batch: Any, batch_size: int, args: argparse.Namespace) -> tuple[float, dict]:
    """(seconds for ``--iters`` inference passes, extra record fields)."""
    eager = subject.infer_net or subject.net
    eager.eval()
    detections: list[int] = []

    def step(module: nn.Module) -> None:
        with torch.inference_mode(), autocast(args):
            detections.append(subject.infer(module, batch))

    fwd, compiled = first_call_or_eager(subject, maybe_compile(eager, args), eager, step)
    seconds = timed_steps(lambda: step(fwd), args)
    fields: dict[str, Any] = {"compile": compiled}
    if subject.detects:
        fields["detections_per_img"] = round(detections[-1] / batch_size, 1)
    return seconds, fields


def run_train(subject: Subject, batch: Any, batch_size: int, args: argparse.Namespace) -> tuple[float, dict]:
    """(seconds for ``--iters`` training steps: forward, every loss, backward, AdamW step; extra record fields)."""
    net = subject.net
    net.train()
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.05)

    def step(module: nn.Module) -> None:
        with autocast(args):
            loss = subject.train_loss(module, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    fwd, compiled = first_call_or_eager(subject, maybe_compile(net, args), net, step)
    return timed_steps(lambda: step(fwd), args), {"compile": compiled}


def bench_model(name: str, args: argparse.Namespace, emit: Emitter, peak: float | None) -> list[dict]:
    """Builds one model on the device, emits one record per (mode, batch); returns them."""
    if name == "yolov8m-seg" and import_ultralytics() is None:
        msg = ("ultralytics is not importable; install it (e.g. pip install --target DIR ultralytics) and put DIR "
               "on PYTHONPATH to compare with YOLOv8m-seg")
        note(f"yolov8m-seg skipped: {msg}")
        emit({"model": name, "skipped": msg})
        return []
    subject = build(name, args)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    for module in {id(m): m for m in (subject.net, subject.infer_net) if m is not None}.values():
        module.to(args.device, memory_format=memory_format)
    gflops = count_gflops(subject, subject.infer_net or subject.net, args)
    base = {"model": name, "arch": subject.arch, "size": args.size, "precision": args.precision,
            "device": str(args.device), "channels_last": args.channels_last,
            "params_m": round(sum(p.numel() for p in subject.net.parameters()) / 1e6, 2),
            "gflops_per_img": None if gflops is None else round(gflops, 2), "iters": args.iters, "warmup": args.warmup}
    if name == "fourm21":
        base["overrides"] = list(args.overrides)
    records = []
    for mode in args.modes:  # inference first: training changes the (random) weights
        for batch_size in args.batch:
            rec = {**base, "mode": mode, "batch": batch_size}
            try:
                rec.update(measure(subject, mode, batch_size, args))
            except Exception as e:  # one failed measurement (out of memory, say) must not lose the others
                rec["error"] = "out of memory" if isinstance(e, torch.OutOfMemoryError) else describe(e)
                note(f"{name} {mode} batch {batch_size}: {rec['error']}")
                free_memory(args.device)
            if "img_s" in rec and gflops is not None:
                tflops_s = gflops * (3 if mode == "train" else 1) * rec["img_s"] / 1e3
                rec["tflops_s"] = round(tflops_s, 4)
                rec["mfu"] = None if peak is None else round(tflops_s / peak, 4)
            emit(rec)
            records.append(rec)
    del subject
    return records


# ---------------------------------------------------------------------------------------- summary
def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else round(a / b, 3)


def summarize(records: list[dict], args: argparse.Namespace) -> dict:
    """Ratios per batch size and the issue's targets (``met`` is null where a figure is missing)."""
    speed = {(r["model"], r["mode"], r["batch"]): r.get("img_s") for r in records if "mode" in r}
    per_batch: dict[str, dict] = {}
    targets = []
    for b in args.batch:
        def img_s(model: str, mode: str, b: int = b) -> float | None:
            return speed.get((model, mode, b))

        combined = {}
        for mode in MODES:
            parts = [img_s(m, mode) for m in SINGLE_TASK]
            combined[mode] = None if None in parts else round(1 / sum(1 / x for x in parts), 3)
        ours = {(r["mode"], r["batch"]): r for r in records if r["model"] == "fourm21" and "mode" in r}
        infer, train = ours.get(("infer", b), {}), ours.get(("train", b), {})
        values = {
            "infer_vs_yolov8m_seg": ratio(img_s("fourm21", "infer"), img_s("yolov8m-seg", "infer")),
            "infer_mfu": infer.get("mfu"),
            "train_vs_yolov8m_seg": ratio(img_s("fourm21", "train"), img_s("yolov8m-seg", "train")),
            "train_vs_backbone": ratio(img_s("fourm21", "train"), img_s("backbone", "train")),
            "train_peak_mem_gb": train.get("peak_mem_gb"),
        }
        per_batch[str(b)] = {
            **{k: v for k, v in values.items() if k != "train_peak_mem_gb"},
            "infer_vs_backbone": ratio(img_s("fourm21", "infer"), img_s("backbone", "infer")),
            "single_task_combined_img_s": combined,
            "infer_vs_single_task_combined": ratio(img_s("fourm21", "infer"), combined["infer"]),
            "train_vs_single_task_combined": ratio(img_s("fourm21", "train"), combined["train"]),
        }
        for key, text, threshold, higher in TARGETS:
            if key == "train_peak_mem_gb" and b != 64:
                continue
            value = values[key]
            met = None if value is None else (value >= threshold if higher else value <= threshold)
            targets.append({"batch": b, "target": text, "value": value, "met": met})
    return {"summary": {"size": args.size, "precision": args.precision, "device": str(args.device),
                        "per_batch": per_batch, "targets": targets,
                        "targets_apply_to": "H100, 640x640, bf16 autocast; other settings only inform"}}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    emit = Emitter(args.json_out)
    peak = peak_tflops(args)
    emit({"machine": machine(args), "peak_tflops": peak, "precision": args.precision, "size": args.size,
          "batch": args.batch, "iters": args.iters, "warmup": args.warmup, "compile": args.compile,
          "channels_last": args.channels_last, "argv": sys.argv[1:] if argv is None else argv})
    records: list[dict] = []
    for name in args.models:
        try:
            records += bench_model(name, args, emit, peak)
        except Exception as e:  # a model that cannot be built: say so, measure the others
            note(f"{name}: {describe(e)}")
            records.append({"model": name, "error": describe(e)})
            emit(records[-1])
            free_memory(args.device)
    emit(summarize(records, args))
    failed = [r for r in records if r.get("error") not in (None, "out of memory")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
