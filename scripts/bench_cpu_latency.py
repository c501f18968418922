"""CPU latency of the fourm21 network, batch 1, fp32: PyTorch eager, ONNX Runtime, ONNX Runtime int8, OpenVINO.

Prints one JSON line per (model, size, backend, stage); ``median_ms`` is the median of ``--runs``
timed runs after ``--warmup`` untimed ones. Stages:

- ``forward``: the network's raw head outputs;
- ``end2end``: forward + box decoding + NMS + instance masks at input size + semantic map + class
  probabilities, i.e. what ``model.predict`` returns, once per ``--max-det`` value. ``detections``
  says how many boxes (and masks) it produced: random weights keep all ``max_det`` of them;
- ``end2end_graph`` (ONNX and OpenVINO): the ``fourm21-export end2end=true`` graph, with decoding and NMS
  inside, plus the mask upsampling ``fourm21.load`` does. ``graph_detections`` is how many the graph
  returned (it has no ``max_det``; random weights put about all ``pre_nms_topk`` candidates there).

Backends: ``eager`` (``net(x)``, ``decode(net(x))``, with ``x`` in the layout ``Fourm21Model.predict``
feeds: channels-last on a CPU); ``onnx``, the graphs ``fourm21-export`` writes,
in ONNX Runtime (``end2end``: the raw-output graph + ``fourm21.inference.decode``, as ``fourm21.load``
runs a default ONNX export); ``int8``, the same graphs after ONNX Runtime dynamic quantisation;
``openvino``, the same two graphs converted to OpenVINO IR as ``fourm21-export format=openvino`` does, run
by ``OpenVinoRunner`` (what ``fourm21.load`` runs) in OpenVINO's CPU plugin at f32 inference precision;
``openvino_bf16``, the same at bf16 (OpenVINO's own default on CPUs with AMX / AVX-512 BF16; ``ov_precision``
records what the plugin chose, f32 where the CPU has no bf16).
When ``ultralytics`` is importable, YOLOv8n-seg built from its yaml (random weights, conv+BN fused as
its predictor runs it) is timed in the same run as a reference; otherwise a line says it was skipped.

All measurements of one input size are timed round-robin (each round runs every one of them once),
so a burst of other work on a shared machine slows them all alike; ``load_1m`` records the load.

    python scripts/bench_cpu_latency.py                                   # model=lite, 320 and 640
    python scripts/bench_cpu_latency.py --models lite multitask --sizes 320 --backends eager onnx
    python scripts/bench_cpu_latency.py --models multitask lite --sizes 320 --backends eager onnx openvino
    python scripts/bench_cpu_latency.py --ckpt runs/x/checkpoints/best.ckpt --sizes 320
    python scripts/bench_cpu_latency.py --sizes 64 --runs 3 --warmup 1 --overrides model.neck.channels=16
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

BACKENDS = ("eager", "onnx", "int8", "openvino", "openvino_bf16")
OV_PRECISION = {"openvino": "f32", "openvino_bf16": "bf16"}
Job = tuple[dict, Callable[[], object]]  # (the record to print, the call to time)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["lite"], help="fourm21/configs/model/<name>.yaml (default: lite)")
    p.add_argument("--ckpt", default=None, help="time a trained .ckpt (its own config) instead of --models")
    p.add_argument("--sizes", nargs="+", type=int, default=[320, 640], help="square input sides")
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    p.add_argument("--runs", type=int, default=15, help="timed runs per measurement (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs before timing")
    p.add_argument("--threads", type=int, default=2, help="torch, ONNX Runtime and OpenVINO intra-op threads")
    p.add_argument("--num-classes", type=int, default=80, help="object classes (80 = COCO, as YOLOv8n-seg)")
    p.add_argument("--num-image-classes", type=int, default=10, help="classes of the image-level head")
    p.add_argument("--max-det", nargs="+", type=int, default=[10, 100],
                   help="end2end stages once per value: at most this many boxes and masks per image "
                        "(default: 10, and 100 = the config's value, the worst case)")
    p.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides, e.g. model.neck.channels=32")
    p.add_argument("--no-yolo", action="store_true", help="skip the YOLOv8n-seg reference")
    p.add_argument("--ort-spinning", action="store_true",
                   help="let ONNX Runtime's idle threads spin (its default); off here, as they would otherwise "
                        "compete with the PyTorch decoding that follows each run")
    p.add_argument("--exporter", choices=("dynamo", "torchscript"), default="torchscript",
                   help="ONNX exporter of the raw-output graph (the end-to-end graph always uses torchscript)")
    args = p.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.threads < 1 or min(args.max_det) < 1:
        p.error("--runs, --threads and --max-det must be >= 1, --warmup >= 0")
    return args


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}


def load_average() -> float | None:
    """The 1-minute load average: above the number of threads timed, other work shared the CPU."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def run_jobs(jobs: list[Job], runs: int, warmup: int) -> None:
    """Warm every job up, then time them round-robin; one line per job with its median etc. in ms."""
    times: list[list[float]] = [[] for _ in jobs]
    with torch.inference_mode():
        for _, fn in jobs:
            for _ in range(warmup):
                fn()
        for _ in range(runs):
            for i, (_, fn) in enumerate(jobs):
                t0 = time.perf_counter()
                fn()
                times[i].append((time.perf_counter() - t0) * 1e3)
    load = load_average()
    for (record, _), t in zip(jobs, times):
        emit({**record, "median_ms": round(statistics.median(t), 2), "min_ms": round(min(t), 2),
              "max_ms": round(max(t), 2), "mean_ms": round(statistics.fmean(t), 2), "runs": runs, "warmup": warmup,
              "load_1m": load})


def model_config(name: str, size: int, args: argparse.Namespace) -> dict:
    """``fourm21/configs/model/<name>.yaml`` composed through the train config, resolved, at input side ``size``."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from fourm21.engine.common import CONFIG_DIR

    overrides = [f"model={name}", f"data.img_size={size}", f"data.num_classes={args.num_classes}",
                 f"data.num_image_classes={args.num_image_classes}", *args.overrides]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    return OmegaConf.to_container(cfg.model, resolve=True)


def build(name: str | None, size: int, args: argparse.Namespace):
    """(Fourm21Model, label): random weights (seed 0) from a model config, or a trained checkpoint."""
    import fourm21
    from fourm21.inference.model import Fourm21Model
    from fourm21.models.multitask import build_model

    if args.ckpt:
        return fourm21.load(args.ckpt), Path(args.ckpt).name
    torch.manual_seed(0)
    cfg = model_config(name, size, args)
    return Fourm21Model.from_net(build_model(cfg), cfg, {"img_size": size}), name


def ort_session(path: Path, threads: int, spinning: bool = False):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def quantize(src: Path, dst: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # it advises a pre-processing pass and lists tensors it leaves in fp32
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)
    return dst


def detections(preds: list[dict]) -> int:
    return int(sum(len(p["boxes"]) for p in preds)) if preds and "boxes" in preds[0] else 0


def with_max_det(net, max_det: int, fn: Callable[[], list[dict]]) -> Callable[[], list[dict]]:
    """``fn`` run with the detection head's ``max_det`` set (it caps boxes and masks after NMS)."""
    def run() -> list[dict]:
        net.heads["det"].max_det = max_det
        return fn()
    return run


def jobs_ours(name: str | None, size: int, args: argparse.Namespace, workdir: Path) -> list[Job]:
    from fourm21.inference.decode import DecodeSettings, decode

    model, label = build(name, size, args)
    net = model.net.eval()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    base = {"model": label, "size": size, "batch": 1, "dtype": "fp32", "threads": args.threads,
            "params_m": round(sum(p.numel() for p in net.parameters()) / 1e6, 3)}
    jobs: list[Job] = []
    if "eager" in args.backends:
        xin = model.network_input(x)  # the layout Fourm21Model.predict feeds the network (channels-last on a CPU)
        layout = {"channels_last": xin.is_contiguous(memory_format=torch.channels_last)}
        jobs.append(({**base, "backend": "eager", "stage": "forward", **layout}, lambda: net(xin)))
        jobs += end2end_jobs(net, {**base, "backend": "eager", "stage": "end2end", **layout},
                             lambda: decode(net(xin), (size, size), DecodeSettings.from_net(net)), args)
    onnx_backends = [b for b in args.backends if b != "eager"]
    if not onnx_backends:
        return jobs
    from fourm21.export import formats

    out_dir = workdir / f"{label}_{size}"
    out_dir.mkdir(parents=True, exist_ok=True)
    raw_path, e2e_path = out_dir / "model.onnx", out_dir / "model_end2end.onnx"
    t0 = time.perf_counter()
    names = formats.export_onnx(model, raw_path, size, dynamo=args.exporter == "dynamo")["output_names"]
    formats.export_onnx_end2end(model, e2e_path, size)
    base["export_s"] = round(time.perf_counter() - t0, 1)
    net.eval()  # the TorchScript exporter restores its (training-mode) wrapper's mode onto the network
    irs: tuple[Path, Path] | None = None
    for backend in onnx_backends:
        graphs = (raw_path, e2e_path)
        if backend in OV_PRECISION:
            if irs is None:  # converted once for both precisions
                irs = (out_dir / "model.xml", out_dir / "model_end2end.xml")
                for graph, ir in zip((raw_path, e2e_path), irs):
                    formats.onnx_to_openvino(graph, ir)
            jobs += openvino_jobs(net, names, irs, x, {**base, "backend": backend}, args, OV_PRECISION[backend])
            continue
        if backend == "int8":
            graphs = (quantize(raw_path, out_dir / "model_int8.onnx"),
                      quantize(e2e_path, out_dir / "model_end2end_int8.onnx"))
        jobs += onnx_jobs(net, names, graphs, x, {**base, "backend": backend}, args)
    return jobs


def end2end_jobs(net, base: dict, predict: Callable[[], list[dict]], args: argparse.Namespace) -> list[Job]:
    jobs = []
    for max_det in args.max_det:
        fn = with_max_det(net, max_det, predict)
        with torch.inference_mode():
            jobs.append(({**base, "max_det": max_det, "detections": detections(fn())}, fn))
    return jobs


def onnx_jobs(net, names: list[str], graphs: tuple[Path, Path], x: torch.Tensor, base: dict,
              args: argparse.Namespace) -> list[Job]:
    """The raw-output graph (forward; + ``decode`` = end2end) and the ``end2end=true`` graph."""
    import onnxruntime as ort

    from fourm21.inference.decode import DecodeSettings, decode, split_images
    from fourm21.inference.raw_outputs import restore_outputs

    raw_graph, e2e_graph = graphs
    size = tuple(x.shape[-2:])
    feed = {"images": x.numpy()}
    base = {**base, "onnxruntime": ort.__version__, "ort_spinning": args.ort_spinning}
    sess = ort_session(raw_graph, args.threads, args.ort_spinning)
    with torch.inference_mode():
        reference = {f"{t}.{k}": v for t, raw in net(x).items() for k, v in raw.items()}
    diff = max(float(np.abs(o - reference[n].numpy()).max()) for n, o in zip(names, sess.run(names, feed)))

    def end2end() -> list[dict]:
        arrays = [torch.from_numpy(a) for a in sess.run(names, feed)]
        return decode(restore_outputs(names, arrays), size, DecodeSettings.from_net(net))

    sess_g = ort_session(e2e_graph, args.threads, args.ort_spinning)
    names_g = [o.name for o in sess_g.get_outputs()]

    def end2end_graph() -> list[dict]:
        arrays = dict(zip(names_g, (torch.from_numpy(a) for a in sess_g.run(names_g, feed))))
        return split_images(arrays, x.shape[0], size, DecodeSettings.from_net(net))

    raw_mb, graph_mb = round(raw_graph.stat().st_size / 2**20, 2), round(e2e_graph.stat().st_size / 2**20, 2)
    jobs: list[Job] = [({**base, "stage": "forward", "max_abs_diff": round(diff, 6), "size_mb": raw_mb},
                        lambda: sess.run(names, feed))]
    jobs += end2end_jobs(net, {**base, "stage": "end2end", "size_mb": raw_mb}, end2end, args)
    graph_dets = len(sess_g.run(["det_scores"], feed)[0])
    jobs += end2end_jobs(net, {**base, "stage": "end2end_graph", "size_mb": graph_mb,
                               "graph_detections": graph_dets}, end2end_graph, args)
    return jobs


def openvino_jobs(net, names: list[str], irs: tuple[Path, Path], x: torch.Tensor, base: dict,
                  args: argparse.Namespace, precision: str) -> list[Job]:
    """``onnx_jobs`` for the OpenVINO IRs of the same two graphs, run by ``OpenVinoRunner``."""
    import openvino as ov

    from fourm21.inference.decode import DecodeSettings, decode, split_images
    from fourm21.inference.runners import OpenVinoRunner

    raw_ir, e2e_ir = irs
    size = tuple(x.shape[-2:])
    feed = {"images": x.numpy()}
    runner = OpenVinoRunner(raw_ir, names, precision, args.threads)
    base = {**base, "openvino": ov.__version__.split("-")[0], "ov_precision": runner.precision}
    with torch.inference_mode():
        reference = {f"{t}.{k}": v for t, raw in net(x).items() for k, v in raw.items()}
    got = runner.run(x)
    request = runner.request_for(tuple(x.shape))  # what runner.run(x) used: compiled for this shape
    diff = max(float((got[n] - reference[n]).abs().max()) for n in names)

    def end2end() -> list[dict]:
        return decode(runner(x), size, DecodeSettings.from_net(net))

    runner_g = OpenVinoRunner(e2e_ir, None, precision, args.threads)

    def end2end_graph() -> list[dict]:
        return split_images(runner_g.run(x), x.shape[0], size, DecodeSettings.from_net(net))

    def ir_mb(xml: Path) -> float:
        return round((xml.stat().st_size + xml.with_suffix(".bin").stat().st_size) / 2**20, 2)

    jobs: list[Job] = [({**base, "stage": "forward", "max_abs_diff": round(diff, 6), "size_mb": ir_mb(raw_ir)},
                        lambda: request.infer(feed))]  # as ONNX Runtime's forward: numpy in, numpy out
    jobs += end2end_jobs(net, {**base, "stage": "end2end", "size_mb": ir_mb(raw_ir)}, end2end, args)
    graph_dets = len(runner_g.run(x)["det_scores"])
    jobs += end2end_jobs(net, {**base, "stage": "end2end_graph", "size_mb": ir_mb(e2e_ir),
                               "graph_detections": graph_dets}, end2end_graph, args)
    return jobs


def load_yolo() -> torch.nn.Module | None:
    """ultralytics YOLOv8n-seg from its yaml, random weights, conv+BN fused (as its predictor runs it);
    None, after a line saying so, when ultralytics is not importable."""
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolo_cfg_"))
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its first import announces a settings file
            from ultralytics import YOLO
    except ImportError as e:
        emit({"model": "yolov8n-seg", "skipped": f"ultralytics is not importable ({e}); "
              "install it (e.g. pip install --target DIR ultralytics) and put DIR on PYTHONPATH"})
        return None
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return YOLO("yolov8n-seg.yaml").model.fuse().eval()


def yolo_job(net: torch.nn.Module, size: int, args: argparse.Namespace) -> Job:
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    record = {"model": "yolov8n-seg", "size": size, "batch": 1, "dtype": "fp32", "threads": args.threads,
              "params_m": round(sum(p.numel() for p in net.parameters()) / 1e6, 3), "backend": "eager",
              "stage": "forward"}
    return record, lambda: net(x)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    emit({"machine": machine(), "threads": args.threads, "runs": args.runs, "warmup": args.warmup,
          "load_1m": load_average(), "argv": sys.argv[1:] if argv is None else argv})
    yolo = None if args.no_yolo else load_yolo()
    names = [None] if args.ckpt else args.models
    with tempfile.TemporaryDirectory(prefix="fourm21_bench_") as tmp:
        for size in args.sizes:
            jobs = [yolo_job(yolo, size, args)] if yolo is not None else []
            for name in names:
                jobs += jobs_ours(name, size, args, Path(tmp))
            run_jobs(jobs, args.runs, args.warmup)
    return 0


if __name__ == "__main__":
    sys.exit(main())
