"""Training-step cost of fourm21 (lite and default, all four heads) against YOLO26n-seg, YOLO11n-seg, YOLOv8n-seg.

Prints one JSON line per (model, part), then a ``summary`` line. Every model is timed in the same run,
on one device, at one input size and batch, with random weights, on the same images:

  lite, default  fourm21 ``fourm21/configs/model/lite.yaml`` / ``multitask.yaml`` composed as fourm21-train does with
                 ``experiment=coco`` (its det/sem levels, 80 classes) plus the classification head
                 (``model.heads.cls.enabled=true data.num_image_classes=10``); COCO has no image-level
                 class, so the pre-collated batches get random ones (``cls_labels: synthetic``)
  yolo26n-seg, yolo11n-seg, yolov8n-seg
                 ultralytics' own model (built from its ``<name>.yaml``, nothing downloaded), its own loss
                 (the model's criterion, ``model.loss``: YOLO26n-seg's one-to-many + one-to-one ``E2ELoss`` over
                 ``SegmentLoss26``, ``v8SegmentationLoss`` for the other two) and its own data set (YOLODataset,
                 its default train augmentation: mosaic, affine, HSV, flip), on the same images converted to
                 YOLO-seg labels (``coco_to_yolo.py``); AdamW(lr=1e-3, wd=5e-4) for all (ultralytics' ``auto``
                 optimizer picks AdamW too, and MuSGD past 10,000 iterations); a ``skipped`` line per model
                 when ultralytics is not importable (it is no dependency of fourm21)

Parts (``ms_per_batch`` is the median over ``--iters`` timed iterations after ``--warmup``):

  data       the data pipeline alone: decode + augmentation + targets + collate of one batch, in this
             process (num_workers=0), one torch/OpenCV thread. fourm21: the training set of
             ``cfg.data.datamodule`` + ``collate_samples``; YOLO: its dataset + ``collate_fn``. YOLO keeps
             the last min(n, 8 x batch) decoded images in RAM for mosaic, which on a small set (coco-mini:
             77 images) holds all of them: ``data`` is then decode-free; ``data_decode`` (YOLO only)
             decodes each sample's own image again, as on a full-size set where that buffer rarely holds it
  step       the whole training step on device-resident, pre-collated batches: forward, every loss (and
             the weighted sum), backward, gradient clipping at norm 10 (both trainers clip there), AdamW step,
             zero_grad. No EMA (YOLO's trainer also updates an EMA copy each step), no logging
  forward    the network forward alone, train mode, autograd recording
  loss       every loss forward (fourm21: ``head_losses`` + ``MultiTaskLoss``; YOLO: its criterion)
  backward   backward of the total loss
  optimizer  clip + AdamW step + zero_grad
  loss.<head>  fourm21, per head: that head's loss forward (``loss_fwd_ms``, from one shared cache as
             ``head_losses`` runs them) and its backward alone through the whole network (``bwd_ms``, the
             graph retained between heads). ``det`` includes the FCOS assignment (``assign_ms`` times it
             alone) whose ``det_matched`` ``inst`` reuses. The heads' backwards each traverse the shared
             trunk, so they add up to more than ``backward``. YOLO: ``loss.seg``, its one criterion
             (assignment, box, cls, DFL and mask losses; YOLO26: both heads' assignments and losses)

Peak memory: on a CPU the process's RSS, sampled every 2 ms in a thread during the part (ru_maxrss
cannot be reset per part), from one extra untimed round after the timed ones in which glibc's free heap
is handed back to the OS (``malloc_trim``) before each part; every model and its batches live in this
one process, so ``mem_delta_mb``, peak minus the RSS when the part began, is the part's own share. On
CUDA ``max_memory_allocated`` / its growth over the part, reset per part.

Models are timed round-robin (each iteration runs every part of every model once), so machine noise
hits all alike; the load average is recorded at the start and the end. The ``summary`` line gives, for
each fourm21 model and each ultralytics model timed, ``<fourm21>_vs_<peer>_step`` (and ``_data``,
``_data_decode``): fourm21's img/s over the peer's (above 1: fourm21 is faster).

Data: ``--data`` (default ../shared/data/coco-mini next to the repository, the COCO 2017 layout);
when that folder is absent, or with ``--data synthetic``, a small synthetic COCO folder is written
(JPEGs with Poisson(7.3) polygon instances per image, as COCO's average) and used the same way.

    python scripts/bench_train.py --device cpu --size 320 --batch 16 --threads 1 --iters 5 --warmup 1
    PYTHONPATH=/tmp/ultra python scripts/bench_train.py --models lite default yolo26n-seg yolov8n-seg
    python scripts/bench_train.py --smoke --models lite default        # seconds: 64 px, batch 2, 1 iteration
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cpu_latency import code_state, emit, machine  # noqa: E402
from coco_to_yolo import convert, offline_ultralytics  # noqa: E402

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations would ask PyPI for a newer version
REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "coco-mini"
PEERS = ("yolo26n-seg", "yolo11n-seg", "yolov8n-seg")  # ultralytics' <name>.yaml
MODELS = ("lite", "default", *PEERS)
CONFIGS = {"lite": "lite", "default": "multitask"}  # fourm21 model name -> fourm21/configs/model/<name>.yaml
NUM_IMAGE_CLASSES = 10
CLIP_NORM = 10.0  # fourm21/configs/trainer/cpu.yaml gradient_clip_val; ultralytics' optimizer_step max_norm
Record = dict[str, float]
Measure = Callable[[], dict[str, Record]]  # one iteration of one measurement: {part: {key: value}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu | cuda (| cuda:N)")
    p.add_argument("--size", type=int, default=320, help="square input side")
    p.add_argument("--batch", type=int, default=16, help="images per batch")
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--iters", type=int, default=5, help="timed iterations (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations before timing")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (data parts always run on one)")
    p.add_argument("--data", default=None,
                   help=f"COCO-layout folder, or 'synthetic' (default: {DEFAULT_DATA} when present, else synthetic)")
    p.add_argument("--batches", type=int, default=4, help="distinct pre-collated batches the step parts cycle through")
    p.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides for the fourm21 models")
    p.add_argument("--channels-last", action="store_true",
                   help="every network and its input batches in channels-last memory format")
    p.add_argument("--profile", type=int, default=0, metavar="K",
                   help="after timing, profile one step per model and print its K costliest ops (self time)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-only", action="store_true", help="time the data pipelines only (no training step)")
    p.add_argument("--smoke", action="store_true",
                   help="64 px, batch 2, 1 iteration, no warm-up, synthetic data unless --data is given")
    args = p.parse_args(argv)
    if args.smoke:
        args.size, args.batch, args.iters, args.warmup, args.batches = 64, 2, 1, 0, 1
        args.data = args.data or "synthetic"
    if args.iters < 1 or args.warmup < 0 or args.threads < 1 or args.batch < 1 or args.batches < 1:
        p.error("--iters, --threads, --batch and --batches must be >= 1, --warmup >= 0")
    if args.size % 32:
        p.error("--size must be a multiple of 32 (the coarsest stride of every model)")
    return args


def load_average() -> list[float] | None:
    """1, 5, 15-minute load: above the threads timed, other work shared the CPUs."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


# ---------------------------------------------------------------------------------------------- measuring


class RssSampler:
    """This process's resident memory, sampled in a daemon thread: a per-part peak, which ru_maxrss
    (one peak for the whole process life) cannot give."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s = interval_s
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.available = Path("/proc/self/statm").is_file()
        self.peak = self.current()
        if self.available:
            threading.Thread(target=self._run, daemon=True).start()

    def current(self) -> int:
        if not self.available:  # ru_maxrss: KiB on Linux, the process-life peak
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def reset(self) -> int:
        self.peak = now = self.current()
        return now

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, self.current())
            time.sleep(self.interval_s)


class Meter:
    """Wall time (synchronised on CUDA) and peak memory of a block: ``with meter.span(rec, "ms"): ...``.

    ``trim`` (the CPU memory pass): glibc's free heap goes back to the OS before each block, so the RSS
    it starts from is what is live, not what earlier parts left cached, and ``mem_delta_mb`` is its own.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.rss = RssSampler() if device.type == "cpu" else None
        self.trim = False
        self._malloc_trim = None
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            self._malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def span(self, rec: Record, key: str = "ms") -> Iterator[None]:
        self._sync()
        if self.rss is not None:
            if self.trim and self._malloc_trim is not None:
                self._malloc_trim(0)
            start = self.rss.reset()
        else:
            torch.cuda.reset_peak_memory_stats(self.device)
            start = torch.cuda.memory_allocated(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            rec[key] = rec.get(key, 0.0) + (time.perf_counter() - t0) * 1e3
            peak = max(self.rss.peak, self.rss.current()) if self.rss is not None else \
                torch.cuda.max_memory_allocated(self.device)
            rec["peak_mem_mb"] = max(rec.get("peak_mem_mb", 0.0), peak / 2**20)
            rec["mem_delta_mb"] = max(rec.get("mem_delta_mb", 0.0), (peak - start) / 2**20)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """The data parts run on one torch and one OpenCV thread, as one DataLoader worker would."""
    import cv2

    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)


class IndexStream:
    """Batches of shuffled indices, epoch after epoch (drop_last, as the training loaders)."""

    def __init__(self, n: int, batch: int, seed: int) -> None:
        self.n, self.batch, self.rng, self.order = n, batch, random.Random(seed), []

    def next(self) -> list[int]:
        if len(self.order) < self.batch:
            self.order = list(range(self.n))
            self.rng.shuffle(self.order)
            if self.n < self.batch:
                self.order = (self.order * (self.batch // self.n + 1))[: self.batch]
        out, self.order = self.order[: self.batch], self.order[self.batch:]
        return out


@dataclass
class Bench:
    """One model under test: its measurements (each one iteration's worth) and what its lines say."""

    name: str
    measures: list[Measure]
    step: Measure
    info: dict[str, Any] = field(default_factory=dict)
    results: dict[str, list[Record]] = field(default_factory=dict)
    memory: dict[str, Record] = field(default_factory=dict)  # the CPU memory pass, when there is one
    data: list[Measure] = field(default_factory=list)  # the data-pipeline measures alone (``--data-only``)


def to_device(batch: dict[str, Any], device: torch.device, image_key: str, channels_last: bool) -> dict[str, Any]:
    out = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    if channels_last:
        out[image_key] = out[image_key].contiguous(memory_format=torch.channels_last)
    return out


def place(module: torch.nn.Module, device: torch.device, channels_last: bool) -> torch.nn.Module:
    module = module.to(device)
    return module.to(memory_format=torch.channels_last) if channels_last else module


# ---------------------------------------------------------------------------------------------- data


def synthetic_coco(root: Path, images: int, seed: int, width: int = 640, height: int = 480) -> Path:
    """A COCO-layout folder of JPEGs with Poisson(7.3) polygon instances each (COCO's mean), 80 classes."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    cats = [{"id": i + 1, "name": f"class{i}", "supercategory": "thing"} for i in range(80)]
    for split, n in (("train2017", images), ("val2017", max(images // 4, 1))):
        (root / split).mkdir(parents=True, exist_ok=True)
        imgs, anns = [], []
        for i in range(n):
            yy, xx = np.mgrid[0:height, 0:width]
            base = rng.integers(0, 256, 3)
            arr = (base + 60 * np.sin(xx[..., None] / rng.uniform(20, 80) + yy[..., None] / rng.uniform(20, 80))
                   + rng.normal(0, 12, (height, width, 3))).clip(0, 255).astype(np.uint8)
            im = Image.fromarray(arr)
            draw = ImageDraw.Draw(im)
            for _ in range(rng.poisson(7.3)):
                r = min(width, height) * rng.uniform(0.03, 0.3)
                cx, cy = rng.uniform(r / 2, width - r / 2), rng.uniform(r / 2, height - r / 2)
                angles = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(6, 16)))
                radii = r * rng.uniform(0.5, 1.0, len(angles))
                xs = np.clip(cx + radii * np.cos(angles), 0, width - 1)
                ys = np.clip(cy + radii * np.sin(angles), 0, height - 1)
                poly = np.stack([xs, ys], 1).round(2)
                draw.polygon([tuple(p) for p in poly], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
                x0, y0, x1, y1 = xs.min(), ys.min(), xs.max(), ys.max()
                area = 0.5 * abs(float(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(rng.integers(1, 81)),
                             "segmentation": [poly.reshape(-1).tolist()], "area": area, "iscrowd": 0,
                             "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]})
            name = f"{i + 1:012d}.jpg"
            im.save(root / split / name, quality=90)
            imgs.append({"id": i + 1, "file_name": name, "width": width, "height": height})
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": imgs, "annotations": anns, "categories": cats}))
    return root


def resolve_data(args: argparse.Namespace, tmp: Path) -> tuple[Path, dict]:
    """The COCO folder to use and a description of it for the first line."""
    wanted = None if args.data in (None, "synthetic") else Path(args.data)
    if args.data is None and DEFAULT_DATA.is_dir():
        wanted = DEFAULT_DATA
    if wanted is not None and (wanted / "annotations" / "instances_train2017.json").is_file():
        kind, root = "coco", wanted
    else:
        n = max(2 * args.batch, 4) if args.smoke else max(4 * args.batch, 32)
        size = (160, 120) if args.smoke else (640, 480)
        kind, root = "synthetic", synthetic_coco(tmp / "synthetic_coco", n, args.seed, *size)
    ann = json.loads((root / "annotations" / "instances_train2017.json").read_text())
    desc = {"kind": kind, "root": str(root), "train_images": len(ann["images"]),
            "instances_per_img": round(len(ann["annotations"]) / max(len(ann["images"]), 1), 2)}
    if kind == "synthetic" and wanted is not None:
        desc["note"] = f"{wanted} has no annotations/instances_train2017.json"
    return root, desc


# ---------------------------------------------------------------------------------------------- fourm21


def fourm21_config(name: str, size: int, batch: int, root: Path, extra: list[str]):
    """The train config as ``fourm21-train experiment=coco model=<name>`` composes it, cls head on."""
    from hydra import compose, initialize_config_dir

    from fourm21.engine.common import CONFIG_DIR

    overrides = ["experiment=coco", f"model={CONFIGS[name]}", f"data.img_size={size}", f"data.root={root}",
                 "model.heads.cls.enabled=true", f"data.num_image_classes={NUM_IMAGE_CLASSES}",
                 "data.datamodule.num_workers=0", f"data.datamodule.batch_size={batch}", *extra]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def fourm21_optimizer(module) -> torch.optim.Optimizer:
    """AdamW with the parameter groups of ``MultiTaskModule.configure_optimizers`` (which needs a Trainer
    for its schedule): no weight decay on norms, biases and loss weights."""
    cfg = module.optim_cfg
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.startswith("criterion.") else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.get("weight_decay", 0.05)},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg["lr"], betas=tuple(cfg.get("betas", (0.9, 0.999))))


def fourm21_bench(name: str, args: argparse.Namespace, root: Path, device: torch.device, meter: Meter) -> Bench:
    from hydra.utils import instantiate

    from fourm21.data.collate import collate_samples
    from fourm21.tasks import head_losses, tasks_of
    from fourm21.tasks.detection import det_assign
    from fourm21.training.module import MultiTaskModule

    cfg = fourm21_config(name, args.size, args.batch, root, args.overrides)
    torch.manual_seed(args.seed)
    module = place(MultiTaskModule.from_config(cfg), device, args.channels_last).train()
    net, criterion = module.model, module.criterion
    params = [p for p in module.parameters() if p.requires_grad]
    opt = fourm21_optimizer(module)
    datamodule = instantiate(cfg.data.datamodule)
    datamodule.setup("fit")
    dataset = datamodule.train_set
    stream = IndexStream(len(dataset), args.batch, args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    def next_batch() -> dict[str, Any]:
        return collate_samples([dataset[i] for i in stream.next()])

    batches = []
    for _ in range(args.batches):  # device-resident, with random image-level labels for the cls head
        b = next_batch()
        b["label"] = torch.randint(0, NUM_IMAGE_CLASSES, (len(b["label"]),), generator=gen)
        b["has_label"] = torch.ones_like(b["has_label"])
        batches.append(to_device(b, device, "image", args.channels_last))
    cursor = {"i": 0}

    def batch() -> dict[str, Any]:
        return batches[cursor["i"] % len(batches)]

    def data() -> dict[str, Record]:
        rec: Record = {}
        with one_thread(), meter.span(rec):
            b = next_batch()
        rec["instances_per_img"] = float((b["gt_labels"] >= 0).sum()) / len(b["gt_labels"])
        return {"data": rec}

    def step() -> dict[str, Record]:
        rec: Record = {}
        b = batch()
        with meter.span(rec):
            total, _ = criterion(head_losses(net, net(b["image"]), b))
            total.backward()
            torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return {"step": rec}

    def forward() -> dict[str, Record]:
        rec: Record = {}
        with meter.span(rec):
            out = net(batch()["image"])
        del out
        return {"forward": rec}

    def phases() -> dict[str, Record]:
        """forward (untimed) -> all losses -> backward -> optimizer, each timed."""
        b = batch()
        loss_rec, bwd_rec, opt_rec = {}, {}, {}
        outputs = net(b["image"])
        with meter.span(loss_rec):
            total, _ = criterion(head_losses(net, outputs, b))
        with meter.span(bwd_rec):
            total.backward()
        with meter.span(opt_rec):
            torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return {"loss": loss_rec, "backward": bwd_rec, "optimizer": opt_rec}

    def heads() -> dict[str, Record]:
        """One forward (untimed), then per head: its weighted loss, then its backward alone (graph retained)."""
        b = batch()
        outputs = net(b["image"])
        cache: dict[str, Any] = {}
        out: dict[str, Record] = {}
        order = tasks_of(net.heads)
        for i, (head, task) in enumerate(order.items()):
            rec = out[f"loss.{head}"] = {}
            with meter.span(rec, "loss_fwd_ms"):
                parts = task.loss(head, net.heads[head], outputs, b, cache)
                loss = criterion({head: parts})[0] if parts else None
            if loss is not None:
                with meter.span(rec, "bwd_ms"):
                    loss.backward(retain_graph=i < len(order) - 1)
            rec.setdefault("bwd_ms", 0.0)
            rec["ms"] = rec["loss_fwd_ms"] + rec["bwd_ms"]
        if "det" in net.heads:
            with torch.no_grad(), meter.span(out["loss.det"], "assign_ms"):
                det_assign(net.heads["det"], outputs["det"], b)
        opt.zero_grad(set_to_none=True)
        return out

    def advance() -> dict[str, Record]:
        cursor["i"] += 1
        return {}

    det = cfg.model.heads.det
    info = {"config": f"experiment=coco model={CONFIGS[name]}", "heads": list(net.heads),
            "params_m": round(sum(p.numel() for p in net.parameters()) / 1e6, 3),
            "backbone": cfg.model.backbone.name, "det_strides": list(det.strides),
            "sem_strides": list(cfg.model.heads.sem.strides), "num_classes": int(det.num_classes),
            "cls_labels": "synthetic"}
    return Bench(name, [data, step, forward, phases, heads, advance], step, info, data=[data])


# ---------------------------------------------------------------------------------------------- ultralytics


def import_ultralytics(config_dir: Path) -> str | None:
    """Make ultralytics importable offline; None when it imports, else why not."""
    offline_ultralytics(config_dir)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            import ultralytics  # noqa: F401  (its first import announces a settings file)
    except ImportError as e:
        return f"ultralytics not importable ({e})"
    return None


def yolo_bench(name: str, args: argparse.Namespace, root: Path, tmp: Path, device: torch.device,
               meter: Meter) -> Bench:
    """ultralytics' ``<name>.yaml`` model with its own criterion and data set (the images converted once)."""
    from ultralytics import YOLO
    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_yolo_dataset
    from ultralytics.utils import DEFAULT_CFG

    data_yaml = tmp / "yolo_data" / "data.yaml"
    if not data_yaml.is_file():
        convert(root, tmp / "yolo_data")
    names = [line.split(": ", 1)[1] for line in data_yaml.read_text().splitlines() if line.startswith("  ")]
    data = {"path": data_yaml.parent, "train": str(data_yaml.parent / "images" / "train2017"),
            "names": {i: json.loads(n) for i, n in enumerate(names)}, "nc": len(names), "channels": 3}
    hyp = get_cfg(DEFAULT_CFG, {"task": "segment", "imgsz": args.size, "batch": args.batch, "workers": 0})
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        model = YOLO(f"{name}.yaml").model
        dataset = build_yolo_dataset(hyp, data["train"], args.batch, data, mode="train", stride=32)
    model.nc, model.names, model.args = data["nc"], data["names"], hyp  # what its trainer attaches
    model = place(model, device, args.channels_last).train()
    for p in model.parameters():
        p.requires_grad_(True)
    criterion = model.criterion = model.init_criterion()  # what model.loss builds on its first call
    inner = getattr(criterion, "one2many", None)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=5e-4)
    stream = IndexStream(len(dataset), args.batch, args.seed)

    def next_batch(decode: bool = False) -> dict[str, Any]:
        idx = stream.next()
        if decode and dataset.cache != "ram":
            for i in idx:  # its own image leaves the RAM buffer: decoded again, mosaic partners still buffered
                dataset.ims[i] = None
        return dataset.collate_fn([dataset[i] for i in idx])

    def preprocess(b: dict[str, Any]) -> dict[str, Any]:
        b = to_device(b, device, "img", False)
        b["img"] = b["img"].float() / 255  # DetectionTrainer.preprocess_batch
        if args.channels_last:
            b["img"] = b["img"].contiguous(memory_format=torch.channels_last)
        return b

    batches = [preprocess(next_batch()) for _ in range(args.batches)]
    cursor = {"i": 0}

    def batch() -> dict[str, Any]:
        return batches[cursor["i"] % len(batches)]

    def data_part(decode: bool) -> Measure:
        key = "data_decode" if decode else "data"

        def run() -> dict[str, Record]:
            rec: Record = {}
            with one_thread(), meter.span(rec):
                b = next_batch(decode)
            rec["instances_per_img"] = len(b["cls"]) / len(b["img"])
            return {key: rec}
        return run

    def step() -> dict[str, Record]:
        rec: Record = {}
        b = batch()
        with meter.span(rec):
            loss, _ = model.loss(b, model(b["img"]))
            loss.sum().backward()
            torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return {"step": rec}

    def forward() -> dict[str, Record]:
        rec: Record = {}
        with meter.span(rec):
            out = model(batch()["img"])
        del out
        return {"forward": rec}

    def phases() -> dict[str, Record]:
        b = batch()
        loss_rec, bwd_rec, opt_rec = {}, {}, {}
        preds = model(b["img"])
        with meter.span(loss_rec):
            loss, _ = model.loss(b, preds)
            total = loss.sum()
        with meter.span(bwd_rec):
            total.backward()
        with meter.span(opt_rec):
            torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
            opt.step()
            opt.zero_grad(set_to_none=True)
        seg = {"ms": loss_rec["ms"] + bwd_rec["ms"], "loss_fwd_ms": loss_rec["ms"], "bwd_ms": bwd_rec["ms"],
               "peak_mem_mb": max(loss_rec["peak_mem_mb"], bwd_rec["peak_mem_mb"]),
               "mem_delta_mb": max(loss_rec["mem_delta_mb"], bwd_rec["mem_delta_mb"])}
        return {"loss": loss_rec, "backward": bwd_rec, "optimizer": opt_rec, "loss.seg": seg}

    def advance() -> dict[str, Record]:
        cursor["i"] += 1
        return {}

    import ultralytics

    info = {"ultralytics": ultralytics.__version__, "config": f"{name}.yaml", "heads": ["seg"],
            "criterion": type(criterion).__name__ + (f"({type(inner).__name__})" if inner is not None else ""),
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
            "num_classes": data["nc"], "mosaic": hyp.mosaic, "ram_buffer_images": dataset.max_buffer_length,
            "optimizer": "AdamW(lr=1e-3, wd=5e-4)"}
    data_parts = [data_part(False), data_part(True)]
    return Bench(name, [*data_parts, step, forward, phases, advance], step, info, data=data_parts)


# ---------------------------------------------------------------------------------------------- report


def median(values: list[float]) -> float:
    return statistics.median(values)


def report(bench: Bench, args: argparse.Namespace, device: torch.device) -> dict[str, dict]:
    """One line per part of ``bench``; returns {part: line}."""
    lines = {}
    for part, recs in bench.results.items():
        ms = [r["ms"] for r in recs]
        med = median(ms)
        mem = bench.memory.get(part) or {"peak_mem_mb": max(r["peak_mem_mb"] for r in recs),
                                         "mem_delta_mb": max(r["mem_delta_mb"] for r in recs)}
        line = {"model": bench.name, "part": part, "img_s": round(args.batch * 1e3 / med, 2) if med > 0 else None,
                "ms_per_batch": round(med, 2), "peak_mem_mb": round(mem["peak_mem_mb"], 1),
                "device": str(device), "size": args.size, "batch": args.batch,
                "mem_delta_mb": round(mem["mem_delta_mb"], 1)}
        for key in sorted({k for r in recs for k in r} - {"ms", "peak_mem_mb", "mem_delta_mb"}):
            line[key] = round(median([r[key] for r in recs if key in r]), 2)
        if part.startswith("data"):
            line["ms_per_img"] = round(med / args.batch, 2)
        line.update({"min_ms": round(min(ms), 2), "max_ms": round(max(ms), 2), "iters": len(ms),
                     "threads": 1 if part.startswith("data") else args.threads})
        emit(line)
        lines[part] = line
    return lines


def profile(bench: Bench, k: int, device: torch.device) -> None:
    """The ``k`` ops of one training step with the most self time, with their input shapes."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities, record_shapes=True) as prof:
        bench.step()
    events = prof.key_averages(group_by_input_shape=True)
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    total = sum(getattr(e, attr) for e in events) or 1.0
    top = sorted(events, key=lambda e: -getattr(e, attr))[:k]
    emit({"model": bench.name, "profile": [
        {"op": e.key, "self_ms": round(getattr(e, attr) / 1e3, 2), "share": round(getattr(e, attr) / total, 3),
         "calls": e.count, "shapes": str(e.input_shapes)[:200]} for e in top]})


def summary(all_lines: dict[str, dict[str, dict]], peers: list[str]) -> dict:
    """fourm21's img/s over each requested peer's (None where one was not timed), per-part shares."""
    def ratio(a: str, b: str, part: str, part_b: str | None = None) -> float | None:
        la, lb = all_lines.get(a, {}).get(part), all_lines.get(b, {}).get(part_b or part)
        return round(la["img_s"] / lb["img_s"], 3) if la and lb else None

    out: dict[str, Any] = {}
    for m in [m for m in CONFIGS if m in all_lines]:
        for peer in peers:
            out[f"{m}_vs_{peer}_step"] = ratio(m, peer, "step")
            out[f"{m}_vs_{peer}_data"] = ratio(m, peer, "data")
            out[f"{m}_vs_{peer}_data_decode"] = ratio(m, peer, "data", "data_decode")
    for m, lines in all_lines.items():
        step = lines.get("step")
        if not step:
            continue
        s = step["ms_per_batch"]
        out[f"{m}_breakdown_share"] = {p: round(lines[p]["ms_per_batch"] / s, 3)
                                       for p in ("forward", "loss", "backward", "optimizer") if p in lines}
        heads = {p.split(".", 1)[1]: lines[p] for p in lines if p.startswith("loss.")}
        if heads and m in CONFIGS:
            out[f"{m}_head_share"] = {h: {"loss_fwd": round(ln["loss_fwd_ms"] / s, 3),
                                          "bwd": round(ln["bwd_ms"] / s, 3),
                                          "total": round(ln["ms_per_batch"] / s, 3)} for h, ln in heads.items()}
        if "data" in lines:
            out[f"{m}_data_vs_step_ms"] = round(lines["data"]["ms_per_batch"] / s, 3)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="fourm21_bench_train_") as tmp_str:
        tmp = Path(tmp_str)
        root, data_desc = resolve_data(args, tmp)
        yolo_skip = import_ultralytics(tmp / "yolo_config") if set(PEERS) & set(args.models) else None
        torch.set_num_threads(args.threads)  # after ultralytics' import, which sets thread counts of its own
        emit({"machine": machine(), "device": str(device), "threads": args.threads, "size": args.size,
              "batch": args.batch, "iters": args.iters, "warmup": args.warmup, "data": data_desc,
              "channels_last": args.channels_last, "code": code_state(),
              "load_avg_start": load_average(), "argv": sys.argv[1:] if argv is None else argv})
        meter = Meter(device)
        benches: list[Bench] = []
        for name in args.models:
            if name in CONFIGS:
                benches.append(fourm21_bench(name, args, root, device, meter))
            elif yolo_skip:
                emit({"model": name, "skipped": yolo_skip})
            else:
                benches.append(yolo_bench(name, args, root, tmp, device, meter))
        for b in benches:
            emit({"model": b.name, "info": b.info})
            if args.data_only:
                b.measures = b.data
        t0 = time.perf_counter()
        for it in range(args.warmup + args.iters):  # round-robin: every part of every model, then again
            for b in benches:
                for measure in b.measures:
                    for part, rec in measure().items():
                        if it >= args.warmup:
                            b.results.setdefault(part, []).append(rec)
        wall = time.perf_counter() - t0
        if meter.rss is not None:  # one more round, untimed, for memory: trimming the heap would perturb timing
            meter.trim = True
            for b in benches:
                for measure in b.measures:
                    b.memory.update(measure())
            meter.trim = False
        all_lines = {b.name: report(b, args, device) for b in benches}
        for b in benches if args.profile > 0 else []:
            profile(b, args.profile, device)
        peers = [m for m in args.models if m in PEERS]
        emit({"summary": {**summary(all_lines, peers), "timing_wall_s": round(wall, 1), "load_avg_end": load_average(),
                          "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                          "data": data_desc["kind"]}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
