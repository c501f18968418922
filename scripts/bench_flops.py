"""The GPU on paper: FLOPs per image per part, activation memory per training image, and what they predict on an H100.

For each configuration (the network with COCO's 80 classes and ``experiment=coco``'s box, mask and pixel-map heads,
no image class), on a batch of generated shapes images at ``--size`` (their labels are valid for any class count):

- ``fwd_gflop``: forward FLOPs per image of the backbone, the neck, the fusion and each head
  (``torch.utils.flop_counter``: 2 FLOPs per multiply-add; matmuls and convolutions, not element-wise ops);
- ``loss_gflop`` (every head's loss together) and ``bwd_gflop`` (the backward pass, taken as 2x the forward:
  the input and the weight gradients) per image; ``bwd_gflop_counter`` is what ``flop_counter`` itself counts
  for the backward, which overcounts grouped (depthwise) convolutions (5.5x the forward on ``model=lite``);
- ``act_mb``: the tensors autograd saves for the backward pass per training image, measured on the CPU in fp32
  (``torch.autograd.graph.saved_tensors_hooks``, each storage once);
- the prediction for one GPU of ``--peak-tflops`` (H100 SXM dense bf16: 989) at each ``--mfu``: training
  img/s = MFU x peak / (forward + loss + backward FLOPs), inference img/s = MFU x peak / forward FLOPs, and the
  largest training batch in ``--gpu-gb`` with bf16 activations (half the fp32 bytes measured) after the
  weights, gradients and AdamW state (16 bytes per parameter) and ``--reserve-gb``.

These are predictions, not measurements: ultralytics' figure for YOLOv8m-seg on an H100 (1043 img/s inference,
188 img/s training, batch 64, 640 px) is printed beside them for scale. One JSON line per configuration.

    python scripts/bench_flops.py                                  # lite, default, convnext_tiny, vit_small at 640
    python scripts/bench_flops.py --models lite --size 320 --batch 1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cpu_latency import machine  # noqa: E402

COCO_HEADS = ["experiment=coco", "data.num_classes=80", "model.heads.cls.enabled=false"]
MODELS: dict[str, list[str]] = {
    "lite": ["model=lite"],
    "default": [],
    "convnext_tiny": ["model.backbone.name=convnext_tiny"],
    "vit_small": ["model/backbone=vit_tiny", "model.backbone.name=vit_small_patch16_224"],
}
YOLOV8M_SEG_H100 = {"model": "yolov8m-seg", "infer_img_s": 1043, "train_img_s": 188, "batch": 64, "size": 640,
                    "source": "measured by ultralytics on an H100 (the issue's reference figures)"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--size", type=int, default=640)
    p.add_argument("--batch", type=int, default=2, help="images per measured step (FLOPs and memory are per image)")
    p.add_argument("--mfu", type=float, nargs="+", default=[0.30, 0.45])
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    p.add_argument("--gpu-gb", type=float, default=80.0)
    p.add_argument("--reserve-gb", type=float, default=4.0, help="CUDA context, allocator slack, data")
    return p.parse_args(argv)


def part_of(module_name: str) -> str | None:
    """The part a ``FlopCounterMode`` module name belongs to: backbone, neck, fusion or head:<name>."""
    parts = module_name.split(".")
    if len(parts) < 2 or parts[0] != "MultiTaskNet":
        return None
    if parts[1] == "heads" and len(parts) == 3:
        return f"head:{parts[2]}"
    return parts[1] if len(parts) == 2 and parts[1] in ("backbone", "neck", "fusion") else None


@contextmanager
def saved_bytes() -> Iterator[list[int]]:
    """Bytes of the distinct storages autograd saves for backward inside the block (``[total]``)."""
    seen: set[int] = set()
    total = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total[0] += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield total


def shapes_batch(size: int, batch: int, root: Path) -> dict:
    """``batch`` generated shapes images letterboxed to ``size``, collated as training batches are."""
    from fourm21.data.coco import CocoDataset
    from fourm21.data.collate import collate_samples
    from fourm21.data.shapes import ensure_shapes
    from fourm21.data.transforms import build_dense_transform

    ensure_shapes(root, num_train=batch, num_val=1, size=64, max_objects=4)
    ds = CocoDataset(root / "images", root / "annotations" / "instances_train.json",
                     build_dense_transform(size, train=False), semantic_dir=root / "semantic", mask_stride=4)
    return collate_samples([ds[i] for i in range(batch)])


def measure(name: str, size: int, batch: dict) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from torch.utils.flop_counter import FlopCounterMode

    from fourm21.engine.common import CONFIG_DIR
    from fourm21.losses.multitask import MultiTaskLoss
    from fourm21.models.multitask import build_model
    from fourm21.tasks import head_losses

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[*COCO_HEADS, *MODELS[name], f"data.img_size={size}"])
    torch.manual_seed(0)
    net = build_model(OmegaConf.to_container(cfg.model, resolve=True)).train()
    images = batch["image"].float()
    n = images.shape[0]
    with FlopCounterMode(display=False) as fwd, saved_bytes() as act:
        out = net(images)
        with FlopCounterMode(display=False) as loss_fc:
            losses = head_losses(net, out, batch)
            total, _ = MultiTaskLoss({k: 1.0 for k in losses})(losses)
    with FlopCounterMode(display=False) as bwd:
        total.backward()
    parts: dict[str, float] = {}
    for module, ops in fwd.get_flop_counts().items():
        part = part_of(module)
        if part is not None:
            parts[part] = parts.get(part, 0.0) + sum(ops.values()) / n / 1e9
    forward = sum(parts.values())
    params = sum(p.numel() for p in net.parameters())
    return {"model": name, "size": size, "params_m": round(params / 1e6, 2),
            "fwd_gflop": {k: round(v, 3) for k, v in parts.items()}, "fwd_gflop_total": round(forward, 3),
            "loss_gflop": round(loss_fc.get_total_flops() / n / 1e9, 6),
            "bwd_gflop": round(2 * forward, 3),  # the usual 2x forward (input and weight gradients)
            "bwd_gflop_counter": round(bwd.get_total_flops() / n / 1e9, 3),
            "act_mb": round(act[0] / n / 2**20, 1), "params": params}


def predict(rec: dict, args: argparse.Namespace) -> dict:
    train = rec["fwd_gflop_total"] + rec["loss_gflop"] + rec["bwd_gflop"]
    out = {}
    for mfu in args.mfu:
        flops = mfu * args.peak_tflops * 1e3  # GFLOP/s
        out[f"mfu_{mfu:g}"] = {"train_img_s": round(flops / train),
                               "infer_img_s": round(flops / rec["fwd_gflop_total"])}
    free_gb = args.gpu_gb - args.reserve_gb - rec["params"] * 16 / 2**30
    out["max_train_batch_bf16"] = int(free_gb * 1024 / (rec["act_mb"] / 2)) if rec["act_mb"] > 0 else None
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        batch = shapes_batch(args.size, args.batch, Path(tmp) / "shapes")
        for name in args.models:
            rec = measure(name, args.size, batch)
            rec["h100_predicted"] = predict(rec, args)
            rec.pop("params")
            print(json.dumps({**rec, "peak_tflops": args.peak_tflops, **machine()}), flush=True)
    print(json.dumps({"reference": YOLOV8M_SEG_H100}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
