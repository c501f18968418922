"""One training step of a config (the embedded default: no overrides) under precision and optimiser variants.

What ``fourm21-train`` pays per step, without Lightning: forward + every loss + backward + gradient clipping
at ``trainer.gradient_clip_val`` + the optimiser, on pre-collated batches of the config's own training set.
Each variant is the same network (same seed, same weights) and the variants are timed round-robin, so
machine noise hits all alike. Prints one JSON line per variant and a ``summary`` line (ratios to fp32):

  fp32            no autocast, ``torch.optim.AdamW`` unfused (the optimiser before ``optim.optimizer.fused``)
  fp32_fused      no autocast, AdamW as configured (``fused: true``)
  bf16_all        CPU bf16 autocast with every layer in bf16 (``fourm21.models.cpu_autocast`` undone)
  bf16            CPU bf16 autocast as ``trainer.precision=bf16-mixed`` runs it: depthwise convolutions and
                  GroupNorm in fp32 (``keep_fp32_under_cpu_autocast``), AdamW unfused
  bf16_fused      the above with the configured fused AdamW: what ``precision: auto`` gives on an AMX CPU

    python scripts/bench_step.py                                  # the default run's step, 2 threads
    python scripts/bench_step.py --threads 1 --iters 5 model=lite # any Hydra overrides after the options
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cpu_latency import emit, load_average, machine  # noqa: E402
from bench_train import code_state  # noqa: E402

VARIANTS = ("fp32", "fp32_fused", "bf16_all", "bf16", "bf16_fused")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch threads (2: what the default run gets here)")
    p.add_argument("--iters", type=int, default=8, help="timed steps per variant (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    p.add_argument("--batches", type=int, default=4, help="distinct pre-collated batches cycled through")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the train config")
    args = p.parse_args(argv)
    if min(args.threads, args.iters, args.batches) < 1 or args.warmup < 0:
        p.error("--threads, --iters and --batches must be >= 1, --warmup >= 0")
    return args


def undo_fp32_exceptions(net: nn.Module) -> None:
    """Back to plain ``nn.Conv2d`` / ``nn.GroupNorm``: every layer then follows autocast (``bf16_all``)."""
    from fourm21.models.cpu_autocast import DepthwiseConv2dFp32OnCpu, GroupNormFp32OnCpu

    for m in net.modules():
        if type(m) is DepthwiseConv2dFp32OnCpu:
            m.__class__ = nn.Conv2d
        elif type(m) is GroupNormFp32OnCpu:
            m.__class__ = nn.GroupNorm


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from fourm21.data.collate import collate_samples
    from fourm21.engine.common import CONFIG_DIR
    from fourm21.tasks import head_losses
    from fourm21.training.module import MultiTaskModule

    torch.set_num_threads(args.threads)
    with initialize_config_dir(CONFIG_DIR, version_base=None):
        cfg = compose(config_name="train", overrides=args.overrides)
    datamodule = instantiate(cfg.data.datamodule)
    datamodule.prepare_data()
    datamodule.setup("fit")
    dataset, bs = datamodule.train_set, int(cfg.data.datamodule.batch_size)
    batches = [collate_samples([dataset[i] for i in range(k * bs, (k + 1) * bs)]) for k in range(args.batches)]
    clip = float(cfg.trainer.gradient_clip_val or 0.0)

    runs = {}
    for name in args.variants:
        torch.manual_seed(0)
        module = MultiTaskModule.from_config(cfg).train()
        if name == "bf16_all":
            undo_fp32_exceptions(module.model)
        params = [p for p in module.parameters() if p.requires_grad]
        fused = name.endswith("fused")
        optimizer = torch.optim.AdamW(params, lr=float(cfg.optim.lr), fused=fused)
        runs[name] = (module, optimizer, name.startswith("bf16"))

    def step(name: str, batch: dict) -> float:
        module, optimizer, bf16 = runs[name]
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            outputs = module.model(batch["image"], batch.get("caption_tokens"))
            total, _ = module.criterion(head_losses(module.model, outputs, batch))
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in module.parameters() if p.grad is not None], clip)
        optimizer.step()
        return (time.perf_counter() - t0) * 1e3

    emit({"machine": machine(), "threads": args.threads, "batch": bs, "img_size": cfg.data.get("img_size"),
          "overrides": args.overrides, "code": code_state(), "load_avg_start": load_average()})
    times: dict[str, list[float]] = {n: [] for n in runs}
    for i in range(args.warmup + args.iters):  # round-robin: every variant once per round
        for name in runs:
            ms = step(name, batches[i % len(batches)])
            if i >= args.warmup:
                times[name].append(ms)
    medians = {n: statistics.median(t) for n, t in times.items()}
    for name, ms in medians.items():
        emit({"variant": name, "ms_per_step": round(ms, 1), "img_s": round(bs / ms * 1e3, 1),
              "min_ms": round(min(times[name]), 1), "max_ms": round(max(times[name]), 1), "iters": args.iters})
    base = medians.get("fp32")
    emit({"summary": {f"{n}_vs_fp32": round(base / ms, 3) for n, ms in medians.items()} if base else {},
          "load_avg_end": load_average()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
