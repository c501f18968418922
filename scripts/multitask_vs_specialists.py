"""One network for every task against one network per task, at the same number of steps on each task.

``train``: runs ``fourm21-train`` once for the joint network (every head of the experiment) and once per
specialist (the same experiment with only that specialist's heads on): the same backbone, data, batch size,
epochs, seed and schedule, so each specialist takes as many optimiser steps on its task as the joint network
takes on all of them. The experiment validates once, after the last epoch, so the figures are of the last
checkpoint, not of one selected on the split they are reported on. Each run's report gives its metrics and
training time; one JSON line per run, then a Markdown table. Runs may go side by side (``--parallel``, one
thread each): their accuracy does not depend on it, but their ``train_s`` then shares the machine, so the
time ratio comes from ``bench``.

``bench``: the training step and the batch-1 inference latency (``model.predict`` on a 320-pixel image) of the
joint network and of each specialist, built from the same configs, timed round-robin in one process (one
thread): the joint network against the sum of the specialists, as a ratio, on the same machine and backend.

    python scripts/multitask_vs_specialists.py train --root ../shared/data/oxford-pets-mini --epochs 20
    python scripts/multitask_vs_specialists.py bench --root ../shared/data/oxford-pets-mini
    python scripts/multitask_vs_specialists.py train --experiment pets --extra loss=uncertainty --only joint
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# heads on in each run of experiment=pets; the joint network has them all
RUNS: dict[str, list[str]] = {
    "joint": ["cls", "attr", "det", "inst", "sem"],
    "det+inst": ["det", "inst"],
    "image labels": ["cls", "attr"],
    "semantic": ["sem"],
}
ALL_HEADS = RUNS["joint"]
METRICS = {"val/det/map50": "box AP50", "val/inst/map50": "mask AP50", "val/cls/acc": "breed acc",
           "val/attr.species/acc": "species acc", "val/sem/miou": "mIoU"}


def head_overrides(heads: list[str]) -> list[str]:
    return [f"model.heads.{h}.enabled={'true' if h in heads else 'false'}" for h in ALL_HEADS]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["train", "bench"])
    p.add_argument("--experiment", default="pets")
    p.add_argument("--root", default="../shared/data/oxford-pets-mini")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--out", default="runs/multitask_vs_specialists")
    p.add_argument("--only", nargs="*", default=None, help="run these of " + ", ".join(RUNS))
    p.add_argument("--tag", default="", help="suffix of the run folders (a variant: --extra loss=uncertainty)")
    p.add_argument("--extra", nargs="*", default=[], help="more overrides for every run")
    p.add_argument("--parallel", type=int, default=1, help="runs side by side (one thread each)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--iters", type=int, default=8, help="bench: timed rounds")
    p.add_argument("--warmup", type=int, default=2)
    return p.parse_args(argv)


def train(args: argparse.Namespace) -> None:
    names = args.only or list(RUNS)
    bin_dir = Path(sys.executable).parent
    jobs = []
    for name in names:
        run_dir = Path(args.out) / (name.replace(" ", "_").replace("+", "_") + args.tag)
        cmd = [str(bin_dir / "fourm21-train"), f"experiment={args.experiment}", f"data.root={args.root}",
               f"trainer.max_epochs={args.epochs}", f"num_threads={args.threads}", f"hydra.run.dir={run_dir}",
               *head_overrides(RUNS[name]), *args.extra]
        jobs.append((name, run_dir, cmd))
    pending, running, rows = list(jobs), [], []
    while pending or running:
        while pending and len(running) < args.parallel:
            name, run_dir, cmd = pending.pop(0)
            run_dir.mkdir(parents=True, exist_ok=True)
            log = (run_dir / "stdout.log").open("w")
            print(" ".join(cmd), file=sys.stderr)
            running.append((name, run_dir, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)))
        time.sleep(5)
        for job in list(running):
            name, run_dir, proc = job
            if proc.poll() is None:
                continue
            running.remove(job)
            if proc.returncode:
                print(json.dumps({"run": name, "error": f"exit {proc.returncode}, see {run_dir}/stdout.log"}))
                continue
            report = json.loads((run_dir / "report.json").read_text())
            row = {"run": name, "heads": RUNS[name], "epochs": args.epochs, "extra": args.extra,
                   "train_s": round(report.get("time/train_s", float("nan")), 1),
                   **{k: round(report[k], 4) for k in METRICS if k in report}, "run_dir": str(run_dir)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| run | " + " | ".join(METRICS.values()) + " | train_s |")
    print("|---|" + "---|" * (len(METRICS) + 1))
    for r in sorted(rows, key=lambda r: names.index(r["run"])):
        cells = [f"{r[k]:.3f}" if k in r else "—" for k in METRICS]
        print(f"| {r['run']} | " + " | ".join(cells) + f" | {r['train_s']:.0f} |")


def bench(args: argparse.Namespace) -> None:
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from fourm21.data.collate import collate_samples
    from fourm21.engine.common import CONFIG_DIR, cpu_model
    from fourm21.engine.train import fill_from_data
    from fourm21.inference.model import Fourm21Model
    from fourm21.tasks import head_losses
    from fourm21.training.module import MultiTaskModule

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    modules, models, batch, photo = {}, {}, None, None
    for name, heads in RUNS.items():
        with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
            cfg = compose("train", overrides=[f"experiment={args.experiment}", f"data.root={args.root}",
                                              "data.datamodule.num_workers=0", *head_overrides(heads), *args.extra])
        dm = instantiate(cfg.data.datamodule)
        fill_from_data(cfg, dm)
        if batch is None:
            dm.setup("fit")
            size = int(cfg.data.datamodule.batch_size)
            batch = collate_samples([dm.train_set[i] for i in range(size)])
            val = dm.val_set
            photo = str(val.img_dir / val.coco.imgs[val.ids[0]]["file_name"])  # a real photo, as a user feeds it
        module = MultiTaskModule.from_config(cfg)
        optimiser = instantiate(cfg.optim.optimizer)(list(module.parameters()))  # as training's, without a Trainer
        modules[name] = (module, optimiser)
        models[name] = Fourm21Model.from_net(module.model.eval(), OmegaConf.to_container(cfg.model, resolve=True),
                                             {"img_size": int(cfg.data.img_size), **module.hparams.meta})

    def train_step(name: str) -> None:
        module, optimiser = modules[name]
        module.model.train()
        total, _ = module.criterion(head_losses(module.model, module.model(batch["image"]), batch))
        total.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)

    def infer(name: str) -> None:
        modules[name][0].model.eval()
        with torch.inference_mode():
            models[name].predict(photo)

    times: dict[tuple[str, str], list[float]] = {(n, s): [] for n in modules for s in ("train_step", "latency")}
    for i in range(args.warmup + args.iters):
        for name in modules:  # round-robin: a burst of other work slows every model alike
            for stage, fn in (("train_step", train_step), ("latency", infer)):
                t0 = time.perf_counter()
                fn(name)
                if i >= args.warmup:
                    times[(name, stage)].append(time.perf_counter() - t0)
    common = {"cpu": cpu_model(), "threads": args.threads,
              "load_1m": round(os.getloadavg()[0], 2), "batch": int(batch["image"].shape[0])}
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    for (name, stage), ms in med.items():
        print(json.dumps({"run": name, "stage": stage, "median_ms": round(ms, 1), **common}))
    for stage in ("train_step", "latency"):
        summed = sum(med[(n, stage)] for n in RUNS if n != "joint")
        print(json.dumps({"stage": stage, "joint_ms": round(med[("joint", stage)], 1),
                          "specialists_sum_ms": round(summed, 1),
                          "joint_over_sum": round(med[("joint", stage)] / summed, 3), **common}))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    train(args) if args.mode == "train" else bench(args)


if __name__ == "__main__":
    main()
