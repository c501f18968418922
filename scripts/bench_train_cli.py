"""Wall time of the real training CLIs run side by side: fourm21-train (model=lite) and ultralytics' trainer.

``bench_train.py`` times the training step in isolation; this runs each tool's own trainer, with its
own data loading, logging and checkpointing, on the coco-mini train split. ``--tools`` picks them:
``fourm21`` and any of ultralytics' ``yolo26n-seg`` (default), ``yolo11n-seg``, ``yolov8n-seg`` (``yolo``
is kept as a name for ``yolov8n-seg``). All processes start together and run concurrently, one thread
each (``OMP_NUM_THREADS``; fourm21 ``num_threads``; YOLO's ``torch.set_num_threads`` re-applied when its
trainer starts, as it sets its own count on a CPU): more tools than CPU cores slow them all (the first
line records ``processes`` and ``logical_cpus``). No data-loader workers, the same epochs, input size and
batch, no validation where the tool allows:

  fourm21  fourm21-train experiment=coco model=lite data.root=DATA data.img_size=S trainer.max_epochs=E
           data.datamodule.batch_size=B data.datamodule.num_workers=0 num_threads=1 evaluate=false plots=false
           trainer.limit_val_batches=0 hydra.run.dir=OUT/fourm21   (experiment=coco validates every 5 epochs;
           limit_val_batches=0 skips that too)
  <peer>   YOLO("<peer>.yaml").train(data=<converted data.yaml>, epochs=E, imgsz=S, batch=B, workers=0,
           device="cpu", pretrained=False, val=False, plots=False, amp=False, ...), its own loss, data
           pipeline and optimizer choice (``optimizer=auto``); its trainer still validates after the final
           epoch and validates best.pt at the end (val=False only skips the others), which its total wall
           time includes and its per-epoch training times do not

Nothing is downloaded: ultralytics runs offline (``coco_to_yolo.offline_ultralytics``) and both
processes get a ``sitecustomize`` that refuses every internet connection and DNS lookup and lists
the attempts (``network_attempts`` in each line). albumentations, which both use, would ask PyPI for
a newer version at import: ``NO_ALBUMENTATIONS_UPDATE=1`` is set for both (ultralytics sets it itself).

One JSON line per tool: ``wall_s`` (process start to exit), ``fit_s`` (the tool's own training
time: fourm21's report.json ``time/train_s``; YOLO's epochs between its on_train_epoch_start/_end
callbacks), ``epoch_s`` (per epoch: YOLO from those callbacks and results.csv; fourm21 from
fit_s / epochs, as its logs/metrics.csv has no timestamps), the last training loss; then a
``summary`` line with the ratios ``<peer>_over_fourm21_wall`` / ``_fit`` (peer / fourm21: above 1, fourm21
is faster).

    PYTHONPATH=/tmp/ultra python scripts/bench_train_cli.py --epochs 3                        # fourm21, YOLO26n-seg
    PYTHONPATH=/tmp/ultra python scripts/bench_train_cli.py --epochs 3 --tools fourm21 yolov8n-seg
    python scripts/bench_train_cli.py --dry-run --tools fourm21 yolo26n-seg yolo11n-seg yolov8n-seg  # the commands
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from coco_to_yolo import convert, offline_ultralytics  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "coco-mini"
PEERS = ("yolo26n-seg", "yolo11n-seg", "yolov8n-seg")  # ultralytics' <name>.yaml
TOOLS = ("fourm21", *PEERS)
ALIASES = {"yolo": "yolov8n-seg"}  # the name this script gave YOLOv8n-seg before the other peers

# Loaded by every child process: internet connections and lookups fail at once and are logged.
SITECUSTOMIZE = '''
import os, socket
_log = os.environ.get("BENCH_NET_LOG")
def _refuse(what):
    if _log:
        with open(_log, "a") as f:
            f.write(what + "\\n")
    raise OSError(f"network disabled by bench_train_cli: {what}")
_LOCAL = (None, "", "localhost", "127.0.0.1", "::1")
_connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo
def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in _LOCAL:
        _refuse(f"connect {address}")
    return _connect(self, address)
def getaddrinfo(host, *a, **k):
    if host not in _LOCAL:
        _refuse(f"getaddrinfo {host}")
    return _getaddrinfo(host, *a, **k)
socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo
'''

# The YOLO child: argv = model.yaml data.yaml epochs imgsz batch project name threads.
YOLO_CHILD = '''
import json, sys, time, torch
from ultralytics import YOLO
cfg, data, epochs, imgsz, batch, project, name, threads = sys.argv[1:9]
epochs_t = []
try:
    import polars
    no_polars = False
except ImportError:  # an ultralytics installed without its dependencies: its trainer reads results.csv with
    no_polars = True  # polars only to store the results in each checkpoint, and would stop there
model = YOLO(cfg)
model.add_callback("on_train_start", lambda tr: torch.set_num_threads(int(threads)))
if no_polars:
    model.add_callback("on_train_start", lambda tr: setattr(tr, "read_results_csv", lambda: {}))
model.add_callback("on_train_epoch_start", lambda tr: epochs_t.append([time.time(), None]))
model.add_callback("on_train_epoch_end", lambda tr: epochs_t[-1].__setitem__(1, time.time()))
try:
    model.train(data=data, epochs=int(epochs), imgsz=int(imgsz), batch=int(batch), workers=0, device="cpu",
                pretrained=False, val=False, plots=False, amp=False, project=project, name=name, exist_ok=True,
                seed=0, verbose=True)
finally:
    print("BENCH_JSON " + json.dumps({"epoch_s": [e - s for s, e in epochs_t if e], "threads": torch.get_num_threads(),
                                      "no_polars": no_polars}))
'''


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="COCO-layout folder (train2017/, annotations/)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=1, help="threads per tool")
    p.add_argument("--model", default="lite", help="fourm21 fourm21/configs/model/<name>.yaml")
    p.add_argument("--tools", nargs="+", choices=[*TOOLS, *ALIASES], default=["fourm21", "yolo26n-seg"],
                   help="started together (default: fourm21 yolo26n-seg); yolo = yolov8n-seg")
    p.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder)")
    p.add_argument("--dry-run", action="store_true", help="print the commands as JSON and exit")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.threads < 1 or args.batch < 1:
        p.error("--epochs, --threads and --batch must be >= 1")
    args.tools = list(dict.fromkeys(ALIASES.get(t, t) for t in args.tools))
    return args


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def commands(args: argparse.Namespace, out: Path, data_yaml: Path) -> dict[str, list[str]]:
    py = sys.executable
    fourm21_train = str(Path(py).with_name("fourm21-train"))
    fourm21 = [fourm21_train if Path(fourm21_train).exists() else "fourm21-train",
               "experiment=coco", f"model={args.model}", f"data.root={Path(args.data).resolve()}",
               f"data.img_size={args.size}", f"trainer.max_epochs={args.epochs}",
               f"data.datamodule.batch_size={args.batch}", "data.datamodule.num_workers=0",
               f"num_threads={args.threads}", "evaluate=false", "plots=false", "trainer.limit_val_batches=0",
               f"hydra.run.dir={out / 'fourm21'}"]
    yolo = {peer: [py, "-c", YOLO_CHILD, f"{peer}.yaml", str(data_yaml), str(args.epochs), str(args.size),
                   str(args.batch), str(out / "yolo_runs"), peer, str(args.threads)] for peer in PEERS}
    return {"fourm21": fourm21, **yolo}


def child_env(args: argparse.Namespace, out: Path, tool: str) -> dict[str, str]:
    guard = out / "sitecustomize"
    guard.mkdir(exist_ok=True)
    (guard / "sitecustomize.py").write_text(SITECUSTOMIZE)
    threads = str(args.threads)
    # albumentations (both tools' augmentations) asks PyPI for a newer version at import unless told not to
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, PYTHONWARNINGS="ignore",
               BENCH_NET_LOG=str(out / f"{tool}_network.log"), PYTHONUNBUFFERED="1", NO_ALBUMENTATIONS_UPDATE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(guard), *filter(None, [os.environ.get("PYTHONPATH")])])
    if tool in PEERS:  # a settings folder each, as they run at the same time
        env.update(offline_ultralytics(out / f"{tool}_config"), YOLO_VERBOSE="True")  # its usual console log
    return env


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open() as f:
        return [{k.strip(): v.strip() for k, v in row.items() if k} for row in csv.DictReader(f)]


def last_float(rows: list[dict[str, str]], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) not in (None, "")]
    return round(float(vals[-1]), 4) if vals else None


def network_attempts(out: Path, tool: str) -> list[str]:
    """What the child tried to reach (refused by the sitecustomize guard), each attempt once."""
    log = out / f"{tool}_network.log"
    return sorted(set(log.read_text().splitlines())) if log.is_file() else []


def fourm21_result(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    run = out / "fourm21"
    report = json.loads((run / "report.json").read_text()) if (run / "report.json").is_file() else {}
    fit = report.get("time/train_s")
    rows = read_csv(run / "logs" / "metrics.csv")
    epochs_logged = sorted({int(float(r["epoch"])) for r in rows if r.get("epoch")})
    return {"fit_s": round(fit, 2) if fit else None,
            "epoch_s": [round(fit / args.epochs, 2)] * args.epochs if fit else None,
            "epoch_s_source": "report.json time/train_s / epochs (logs/metrics.csv has no timestamps)",
            "epochs_logged": len(epochs_logged), "train_loss": last_float(rows, "train/loss_epoch")}


def yolo_result(out: Path, tool: str, log_text: str) -> dict[str, Any]:
    marker = next((line for line in log_text.splitlines() if line.startswith("BENCH_JSON ")), None)
    child = json.loads(marker.split(" ", 1)[1]) if marker else {}
    rows = read_csv(out / "yolo_runs" / tool / "results.csv")
    cum = [float(r["time"]) for r in rows if r.get("time")]
    epoch_s = child.get("epoch_s")
    return {"fit_s": round(sum(epoch_s), 2) if epoch_s else None,
            "epoch_s": [round(t, 2) for t in epoch_s] if epoch_s else None,
            "epoch_s_source": "on_train_epoch_start/_end callbacks (training only)",
            "results_csv_epoch_s": [round(b - a, 2) for a, b in zip([0.0, *cum], cum)],
            "results_csv_note": "time column differences: the last epoch includes its final-epoch validation",
            "epochs_logged": len(rows), "train_loss": last_float(rows, "train/seg_loss"),
            "train_losses": {k: last_float(rows, k) for k in ("train/box_loss", "train/seg_loss", "train/cls_loss",
                                                               "train/dfl_loss")},
            "threads_in_trainer": child.get("threads"),
            "no_polars": child.get("no_polars")}  # true: results were not stored in its checkpoints


def summary(results: dict[str, dict], epochs: int) -> dict[str, float | None]:
    """Per peer run: its wall and fit time over fourm21's (above 1: fourm21 is faster); every tool's mean epoch."""
    f = results.get("fourm21", {})
    out: dict[str, float | None] = {}
    for peer in [t for t in results if t in PEERS]:
        y = results[peer]
        for key, name in (("wall_s", "wall"), ("fit_s", "fit")):
            out[f"{peer}_over_fourm21_{name}"] = round(y[key] / f[key], 3) if f.get(key) and y.get(key) else None
    for tool, res in results.items():
        out[f"{tool}_epoch_s_mean"] = round(res["fit_s"] / epochs, 2) if res.get("fit_s") else None
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fourm21_bench_cli_") as tmp:
        out = Path(args.out).resolve() if args.out else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        data_yaml = out / "yolo_data" / "data.yaml"
        if not args.dry_run:
            data_yaml = convert(args.data, out / "yolo_data")
        cmds = {t: c for t, c in commands(args, out, data_yaml).items() if t in args.tools}
        if args.dry_run:
            for tool, cmd in cmds.items():
                emit({"tool": tool, "command": cmd[:2] + ["<child code>"] + cmd[3:] if tool in PEERS else cmd})
            return 0
        emit({"epochs": args.epochs, "size": args.size, "batch": args.batch, "threads": args.threads,
              "tools": list(cmds), "processes": len(cmds), "logical_cpus": os.cpu_count(),
              "data": str(Path(args.data).resolve()), "out": str(out), "load_avg_start": list(os.getloadavg())})
        procs, logs, started = {}, {}, {}
        for tool, cmd in cmds.items():  # started together
            logs[tool] = (out / f"{tool}.log").open("w")
            started[tool] = time.perf_counter()
            workdir = out / f"{tool}_cwd"  # each tool's stray files (ultralytics' MLflow callback writes
            workdir.mkdir(exist_ok=True)  # mlflow.db and mlruns/ into its working directory) stay out of the repo
            procs[tool] = subprocess.Popen(cmd, cwd=workdir, env=child_env(args, out, tool), stdout=logs[tool],
                                           stderr=subprocess.STDOUT)
        wall: dict[str, float] = {}
        while len(wall) < len(procs):
            for tool, proc in procs.items():
                if tool not in wall and proc.poll() is not None:
                    wall[tool] = time.perf_counter() - started[tool]
            time.sleep(0.2)
        results: dict[str, dict] = {}
        for tool, proc in procs.items():
            logs[tool].close()
            text = (out / f"{tool}.log").read_text(errors="replace")
            res = fourm21_result(out, args) if tool == "fourm21" else yolo_result(out, tool, text)
            res = {"tool": tool, "returncode": proc.returncode, "wall_s": round(wall[tool], 2), **res,
                   "network_attempts": network_attempts(out, tool), "log": str(out / f"{tool}.log")}
            if proc.returncode != 0:
                res["log_tail"] = text[-2000:]
            results[tool] = res
            emit(res)
        emit({"summary": summary(results, args.epochs) | {"load_avg_end": list(os.getloadavg()),
                                                           "concurrent": len(procs) > 1}})
        return 0 if all(p.returncode == 0 for p in procs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
