"""CPU latency of fourm21 against YOLO26n-seg, YOLO11n-seg and YOLOv8n-seg, batch 1, fp32, on the same backends.

Prints one JSON line per (model, size, backend, stage), then one ``summary`` line per (size, backend)
with the ratios fourm21 / peer. ``median_ms`` is the median of ``--runs`` timed runs after ``--warmup``
untimed ones; every record says in ``includes`` what its time covers. fourm21's stages:

- ``forward``: the network's raw head outputs;
- ``end2end``: forward + box decoding + NMS + instance masks at input size + semantic map + class
  probabilities, i.e. what ``model.predict`` returns, once per ``--max-det`` value. ``detections``
  says how many boxes (and masks) it produced: random weights keep all ``max_det`` of them;
- ``end2end_graph`` (ONNX and OpenVINO): the ``fourm21-export end2end=true`` graph, with decoding, NMS and
  the kept boxes' mask logits inside, plus ``split_images`` (the ``score_thr`` / ``max_det`` filter, masks
  pasted at input size, the semantic map, the class probabilities), as ``fourm21.load`` runs it.
  ``graph_detections`` is how many the graph returned.

Backends: ``eager`` (``net(x)``, ``decode(net(x))``, with ``x`` in the layout ``Fourm21Model.predict``
feeds: channels-last on a CPU); ``onnx``, the graphs ``fourm21-export`` writes,
in ONNX Runtime (``end2end``: the raw-output graph + ``fourm21.inference.decode``, as ``fourm21.load``
runs a default ONNX export); ``int8``, the same graphs after ONNX Runtime dynamic quantisation;
``openvino``, the same two graphs converted to OpenVINO IR as ``fourm21-export format=openvino`` does, run
by ``OpenVinoRunner`` (what ``fourm21.load`` runs) in OpenVINO's CPU plugin at f32 inference precision;
``openvino_bf16``, the same at bf16 (OpenVINO's own default on CPUs with AMX / AVX-512 BF16; ``ov_precision``
records what the plugin chose, f32 where the CPU has no bf16).

The peers (``--peers``, default all three; ``--no-yolo`` = none), when ``ultralytics`` is importable
(it is no dependency: e.g. ``pip install --target DIR ultralytics`` and ``PYTHONPATH=DIR``; otherwise one
``skipped`` line per peer), each built from its yaml with random weights (seed 0), on the same backends:

- ``eager`` ``forward``: the PyTorch model, conv+BN fused as its predictor runs it;
- ``onnx`` / ``openvino`` ``forward``: the graph of ultralytics' own ONNX exporter, alone, in ONNX Runtime
  (``ort_session``, the options of fourm21's rows) and in OpenVINO (``openvino.convert_model`` of that
  ONNX file, run by the same ``OpenVinoRunner``: CPU, f32 inference precision, ``--threads``). YOLO26n-seg
  is exported NMS-free (``nms=False``: its one-to-one head, the top-300 inside the graph, output
  (1, 300, 38) = box xyxy, score, class, 32 mask coefficients); YOLO11n-seg and YOLOv8n-seg export their
  raw head ((1, 116, anchors): box xywh, 80 class scores, 32 coefficients); all three also the
  prototypes (1, 32, S/4, S/4);
- ``end2end`` (the work of fourm21's ``end2end_graph``: boxes, scores, classes and masks at input size):
  YOLO26n-seg: its graph + the ``score_thr`` / ``max_det`` filter; YOLO11n-seg / YOLOv8n-seg: the raw graph
  + best class per anchor above ``score_thr``, the ``pre_nms_topk`` best, ``torchvision.ops.batched_nms`` at
  ``iou_thr``, ``max_det``; then, for all three, the masks in PyTorch: coefficients @ prototypes, crop to
  the box, bilinear upsampling to the input size, threshold at ``mask_thr`` (``--peer-masks paste``: with
  fourm21's ``paste_masks``, the routine its ``split_images`` uses, which upsamples only inside each box;
  ``full``: sigmoid, crop, the whole map upsampled, as ultralytics' own predictor does).
  ``score_thr``, ``iou_thr``, ``pre_nms_topk`` and ``mask_thr`` are fourm21's detection/mask head values
  (each record has them) and ``max_det`` each ``--max-det`` value, on both sides.

Random weights decide how much post-processing there is. fourm21's prior keeps all ``max_det`` boxes;
the peers' class-score prior (about 1e-5) would keep none above ``score_thr``, so their class-logit
biases are set to ``--peer-cls-bias`` (0: scores about 0.5, every side keeps ``max_det``; ``init`` keeps
ultralytics' prior). ``detections`` records how many each side produced.

All measurements of one input size are timed round-robin (each round runs every one of them once),
so a burst of other work on a shared machine slows them all alike; ``load_1m`` records the load. The first
line records the machine, the load and the code timed (``code``: commit and the package files changed).

    python scripts/bench_cpu_latency.py                                   # model=lite, 320 and 640
    PYTHONPATH=DIR python scripts/bench_cpu_latency.py --sizes 320 640 --backends onnx openvino --max-det 100
    python scripts/bench_cpu_latency.py --models lite multitask --sizes 320 --backends eager onnx --no-yolo
    python scripts/bench_cpu_latency.py --models multitask lite --sizes 320 --backends eager onnx openvino
    python scripts/bench_cpu_latency.py --ckpt runs/x/checkpoints/best.ckpt --sizes 320 --peers yolo26n-seg
    python scripts/bench_cpu_latency.py --sizes 64 --runs 3 --warmup 1 --overrides model.neck.channels=16
"""

from __future__ import annotations

import argparse
import contextlib
import copy
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

BACKENDS = ("eager", "onnx", "int8", "openvino", "openvino_bf16")
OV_PRECISION = {"openvino": "f32", "openvino_bf16": "bf16"}
PEERS = ("yolo26n-seg", "yolo11n-seg", "yolov8n-seg")  # ultralytics' <name>.yaml
NMS_FREE = {"yolo26n-seg"}  # exported with nms=False: the one-to-one head, top-k inside the graph
PEER_BACKENDS = ("eager", "onnx", "openvino")
REFERENCE, END2END_TARGET = "yolo26n-seg", 0.8  # issue 28: lite end to end <= 0.8x YOLO26n-seg end to end
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
    p.add_argument("--num-classes", type=int, default=80, help="object classes (80 = COCO, as the peers)")
    p.add_argument("--num-image-classes", type=int, default=10, help="classes of the image-level head")
    p.add_argument("--max-det", nargs="+", type=int, default=[10, 100],
                   help="end2end stages once per value: at most this many boxes and masks per image "
                        "(default: 10, and 100 = the config's value, the worst case)")
    p.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides, e.g. model.neck.channels=32")
    p.add_argument("--peers", nargs="*", choices=PEERS, default=list(PEERS),
                   help="ultralytics models timed beside fourm21 on the eager, onnx and openvino backends "
                        "(default: all three; none: --peers with no value, or --no-yolo)")
    p.add_argument("--no-yolo", action="store_true", help="time no peer (as --peers with no value)")
    p.add_argument("--peer-cls-bias", default="0",
                   help="the peers' class-logit biases before export: a number (default 0: scores about 0.5, so "
                        "random weights keep max_det boxes as fourm21's do), or 'init' for ultralytics' prior")
    p.add_argument("--peer-masks", choices=("paste", "full"), default="paste",
                   help="the peers' mask assembly: paste (fourm21's paste_masks: upsampled inside each box) or "
                        "full (the whole prototype map upsampled, then cropped, as ultralytics' predictor does)")
    p.add_argument("--ort-spinning", action="store_true",
                   help="let ONNX Runtime's idle threads spin (its default); off here, as they would otherwise "
                        "compete with the PyTorch decoding that follows each run")
    p.add_argument("--exporter", choices=("dynamo", "torchscript"), default="torchscript",
                   help="ONNX exporter of the raw-output graph (the end-to-end graph always uses torchscript)")
    args = p.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.threads < 1 or min(args.max_det) < 1:
        p.error("--runs, --threads and --max-det must be >= 1, --warmup >= 0")
    if args.peer_cls_bias != "init":
        try:
            float(args.peer_cls_bias)
        except ValueError:
            p.error(f"--peer-cls-bias: a number or 'init', got {args.peer_cls_bias!r}")
    if args.no_yolo:
        args.peers = []
    args.peers = list(dict.fromkeys(args.peers))
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


def code_state() -> dict:
    """The commit timed, and which files of the package and configs differ from it (work in progress)."""
    import subprocess

    def git(*cmd: str) -> str:
        res = subprocess.run(["git", *cmd], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                             timeout=30)
        return res.stdout if res.returncode == 0 else ""

    changed = [line[3:] for line in git("status", "--porcelain", "--", "fourm21").splitlines()]
    return {"commit": git("rev-parse", "--short", "HEAD").strip() or None, "changed_files": changed}


def load_average() -> float | None:
    """The 1-minute load average: above the number of threads timed, other work shared the CPU."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def run_jobs(jobs: list[Job], runs: int, warmup: int) -> list[dict]:
    """Warm every job up, then time them round-robin; one line per job with its median etc. in ms (returned)."""
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
    lines = []
    for (record, _), t in zip(jobs, times):
        lines.append({**record, "median_ms": round(statistics.median(t), 2), "min_ms": round(min(t), 2),
                      "max_ms": round(max(t), 2), "mean_ms": round(statistics.fmean(t), 2), "runs": runs,
                      "warmup": warmup, "load_1m": load})
        emit(lines[-1])
    return lines


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
    """ONNX Runtime's dynamic int8 quantisation of ``src``, after its pre-processing pass (constant folding: a
    convolution shared by levels with a BatchNorm each gets its folded weights as computed tensors, which the
    quantiser needs as initializers)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    logging.disable(logging.WARNING)  # it lists tensors it leaves in fp32
    prepared = dst.with_name(f"{dst.stem}_prepared.onnx")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)  # an end-to-end graph defeats it
            quantize_dynamic(str(prepared), str(dst), weight_type=QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)
    return dst


DECODE = ("box decoding, the pre_nms_topk best (location, class) pairs, per-class NMS at iou_thr, max_det, the kept "
          "boxes' masks pasted at input size, semantic map, class probabilities")
INCLUDES = {  # what a fourm21 record's time covers, by (eager or graph, stage)
    ("eager", "forward"): "net(x) in PyTorch eager: backbone, neck, every head's raw outputs",
    ("eager", "end2end"): f"net(x) + fourm21.inference.decode in PyTorch: {DECODE}",
    ("graph", "forward"): "the raw-output graph alone: backbone, neck, every head's raw outputs",
    ("graph", "end2end"): f"the raw-output graph + fourm21.inference.decode in PyTorch: {DECODE}",
    ("graph", "end2end_graph"): "the end2end=true graph (box decoding, the pre_nms_topk best, per-class NMS at "
                                "iou_thr, the kept boxes' mask logits, semantic map, class probabilities inside) + "
                                "split_images in PyTorch (score_thr and max_det filter, masks pasted at input size)",
}


def shared_settings(net) -> dict[str, float]:
    """The post-processing values both sides use: fourm21's detection and mask head values."""
    from fourm21.inference.decode import DecodeSettings

    s = DecodeSettings.from_net(net)
    det = next((s.of(n) for n, kind in s.heads.items() if kind == "det"), {})
    inst = next((s.of(n) for n, kind in s.heads.items() if kind == "inst"), {})
    if not det:
        return {}
    return {"score_thr": float(det["score_thr"]), "iou_thr": float(det["iou_thr"]),
            "pre_nms_topk": int(det["pre_nms_topk"]), "mask_thr": float(inst.get("mask_thr", 0.5))}


def detections(preds: list[dict]) -> int:
    return int(sum(len(p["boxes"]) for p in preds)) if preds and "boxes" in preds[0] else 0


def with_max_det(net, max_det: int, fn: Callable[[], list[dict]]) -> Callable[[], list[dict]]:
    """``fn`` run with the detection head's ``max_det`` set (it caps boxes and masks after NMS)."""
    def run() -> list[dict]:
        net.heads["det"].max_det = max_det
        return fn()
    return run


def jobs_ours(name: str | None, size: int, args: argparse.Namespace, workdir: Path) -> tuple[list[Job], dict]:
    """fourm21's jobs at ``size``, and the post-processing values its heads use (``shared_settings``)."""
    from fourm21.inference.decode import DecodeSettings, decode

    model, label = build(name, size, args)
    net = model.net.eval()
    post = shared_settings(net)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    base = {"model": label, "size": size, "batch": 1, "dtype": "fp32", "threads": args.threads,
            "params_m": round(sum(p.numel() for p in net.parameters()) / 1e6, 3)}
    jobs: list[Job] = []
    if "eager" in args.backends:
        xin = model.network_input(x)  # the layout Fourm21Model.predict feeds the network (channels-last on a CPU)
        layout = {"channels_last": xin.is_contiguous(memory_format=torch.channels_last)}
        jobs.append(({**base, "backend": "eager", "stage": "forward", **layout,
                      "includes": INCLUDES["eager", "forward"]}, lambda: net(xin)))
        jobs += end2end_jobs(net, {**base, "backend": "eager", "stage": "end2end", **layout, **post,
                                   "includes": INCLUDES["eager", "end2end"]},
                             lambda: decode(net(xin), (size, size), DecodeSettings.from_net(net)), args)
    onnx_backends = [b for b in args.backends if b != "eager"]
    if not onnx_backends:
        return jobs, post
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
            jobs += openvino_jobs(net, names, irs, x, {**base, "backend": backend}, args, OV_PRECISION[backend], post)
            continue
        if backend == "int8":
            graphs = (quantize(raw_path, out_dir / "model_int8.onnx"),
                      quantize(e2e_path, out_dir / "model_end2end_int8.onnx"))
        jobs += onnx_jobs(net, names, graphs, x, {**base, "backend": backend}, args, post)
    return jobs, post


def end2end_jobs(net, base: dict, predict: Callable[[], list[dict]], args: argparse.Namespace) -> list[Job]:
    jobs = []
    for max_det in args.max_det:
        fn = with_max_det(net, max_det, predict)
        with torch.inference_mode():
            jobs.append(({**base, "max_det": max_det, "detections": detections(fn())}, fn))
    return jobs


def onnx_jobs(net, names: list[str], graphs: tuple[Path, Path], x: torch.Tensor, base: dict,
              args: argparse.Namespace, post: dict) -> list[Job]:
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
    jobs: list[Job] = [({**base, "stage": "forward", "max_abs_diff": round(diff, 6), "size_mb": raw_mb,
                         "includes": INCLUDES["graph", "forward"]}, lambda: sess.run(names, feed))]
    jobs += end2end_jobs(net, {**base, "stage": "end2end", "size_mb": raw_mb, **post,
                               "includes": INCLUDES["graph", "end2end"]}, end2end, args)
    graph_dets = len(sess_g.run(["det_scores"], feed)[0])
    jobs += end2end_jobs(net, {**base, "stage": "end2end_graph", "size_mb": graph_mb, "graph_detections": graph_dets,
                               **post, "includes": INCLUDES["graph", "end2end_graph"]}, end2end_graph, args)
    return jobs


def openvino_jobs(net, names: list[str], irs: tuple[Path, Path], x: torch.Tensor, base: dict,
                  args: argparse.Namespace, precision: str, post: dict) -> list[Job]:
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

    jobs: list[Job] = [({**base, "stage": "forward", "max_abs_diff": round(diff, 6), "size_mb": ir_mb(raw_ir),
                         "includes": INCLUDES["graph", "forward"]},
                        lambda: request.infer(feed))]  # as ONNX Runtime's forward: numpy in, numpy out
    jobs += end2end_jobs(net, {**base, "stage": "end2end", "size_mb": ir_mb(raw_ir), **post,
                               "includes": INCLUDES["graph", "end2end"]}, end2end, args)
    graph_dets = len(runner_g.run(x)["det_scores"])
    jobs += end2end_jobs(net, {**base, "stage": "end2end_graph", "size_mb": ir_mb(e2e_ir),
                               "graph_detections": graph_dets, **post, "includes": INCLUDES["graph", "end2end_graph"]},
                         end2end_graph, args)
    return jobs


# ---------------------------------------------------------------------------------------------- the peers

PEER_INCLUDES = {
    "eager": "model(x) in PyTorch eager, conv+BN fused: network + its head's inference decode{topk}",
    "nms_free_graph": "the exported graph (nms=False) alone: network + NMS-free one-to-one head with the top-{k} "
                      "inside the graph, prototypes; nothing outside",
    "raw_graph": "the exported graph alone: network + raw head (boxes, 80 class scores, 32 coefficients per anchor) "
                 "+ prototypes; nothing outside",
    "nms_free_end2end": "the NMS-free graph + in PyTorch: the score_thr and max_det filter; masks: {masks}",
    "raw_end2end": "the raw graph + in PyTorch: best class per anchor above score_thr, the pre_nms_topk best, "
                   "torchvision batched_nms at iou_thr, max_det; masks: {masks}",
}
MASKS = {"paste": "coefficients @ prototypes, then fourm21's paste_masks (crop to the box, bilinear upsampling "
                  "inside it to the input size, sigmoid > mask_thr)",
         "full": "coefficients @ prototypes, sigmoid, crop to the box, the whole map upsampled bilinearly to the "
                 "input size, > mask_thr"}


@dataclass
class Peer:
    """One ultralytics model: the ``YOLO`` object its exporter runs on and the fused eager copy."""

    name: str
    yolo: Any
    eager: torch.nn.Module
    version: str


def set_cls_bias(model: torch.nn.Module, value: str) -> None:
    """The class-logit biases of every branch of the detection head (ultralytics' ``bias_init`` sets them to a
    prior of about 1e-5 per class) set to ``value``; ``init`` leaves them."""
    if value == "init":
        return
    head = model.model[-1]
    for attr in ("cv3", "one2one_cv3"):
        for branch in getattr(head, attr, None) or []:
            branch[-1].bias.data[: head.nc] = float(value)


def load_peers(args: argparse.Namespace) -> list[Peer]:
    """The ``--peers`` built from their yamls (random weights, seed 0); a ``skipped`` line per peer, and none,
    when ultralytics is not importable."""
    if not args.peers:
        return []
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolo_cfg_"))
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its first import announces a settings file
            import ultralytics
            from ultralytics import YOLO
    except ImportError as e:
        for name in args.peers:
            emit({"model": name, "skipped": f"ultralytics is not importable ({e}); "
                  "install it (e.g. pip install --target DIR ultralytics) and put DIR on PYTHONPATH"})
        return []
    peers = []
    for name in args.peers:
        torch.manual_seed(0)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yolo = YOLO(f"{name}.yaml")
            set_cls_bias(yolo.model, args.peer_cls_bias)
            eager = copy.deepcopy(yolo.model).fuse().eval()
        peers.append(Peer(name, yolo, eager, ultralytics.__version__))
    return peers


def peer_export(peer: Peer, size: int, workdir: Path) -> tuple[Path, float]:
    """The peer's ONNX graph at ``size`` by ultralytics' own exporter (batch 1, static, not simplified), and
    the seconds it took. YOLO26n-seg is exported NMS-free (``nms=False``), the others with their raw head."""
    out = workdir / f"{peer.name}_{size}"
    out.mkdir(parents=True, exist_ok=True)
    extra = {"nms": False} if peer.name in NMS_FREE else {}
    t0 = time.perf_counter()
    with contextlib.chdir(out), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        path = Path(peer.yolo.export(format="onnx", imgsz=size, simplify=False, batch=1, dynamic=False,
                                     device="cpu", **extra)).resolve()
    return path, round(time.perf_counter() - t0, 1)


def peer_openvino(peer: Peer, size: int, onnx_path: Path) -> tuple[Path, str]:
    """The peer's OpenVINO IR (fp32 weights) beside ``onnx_path``: ``openvino.convert_model`` of that ONNX graph;
    where OpenVINO cannot convert it (YOLO26n-seg's NMS-free graph: a GatherElements shape check fails in
    OpenVINO 2026.4), ultralytics' own OpenVINO exporter (from PyTorch, the same network and head), its input
    and outputs renamed to the ONNX graph's. Returns the IR and where it came from."""
    import openvino as ov

    xml = onnx_path.with_suffix(".xml")
    try:
        model = ov.convert_model(str(onnx_path))
        source = "openvino.convert_model of ultralytics' ONNX graph"
    except RuntimeError as e:
        reason = next((line for line in str(e).splitlines() if "failed" in line), str(e).splitlines()[0])
        extra = {"nms": False} if peer.name in NMS_FREE else {}
        with contextlib.chdir(onnx_path.parent), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            folder = Path(peer.yolo.export(format="openvino", imgsz=size, batch=1, dynamic=False, device="cpu",
                                           **extra)).resolve()
        model = ov.Core().read_model(str(next(folder.glob("*.xml"))))
        model.inputs[0].get_tensor().set_names({"images"})
        for i, out in enumerate(model.outputs):
            out.get_tensor().set_names({f"output{i}"})
        source = f"ultralytics' OpenVINO exporter (openvino.convert_model of its ONNX graph fails: {reason[:160]})"
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return xml, source


def peer_masks(coef: torch.Tensor, proto: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int], mask_thr: float,
               mode: str) -> torch.Tensor:
    """(N, M) mask coefficients, (M, Hp, Wp) prototypes, (N, 4) xyxy boxes in input pixels -> (N, H, W) bool masks
    at the input ``size`` (see ``MASKS``)."""
    from fourm21.tasks.masks import paste_masks

    n, (m, hp, wp) = len(coef), proto.shape
    logits = (coef @ proto.reshape(m, -1)).view(n, hp, wp)
    if mode == "paste":
        return paste_masks(logits, boxes, size, threshold=mask_thr)
    if n == 0:
        return torch.zeros((0, *size), dtype=torch.bool)
    h, w = size
    b = boxes * torch.tensor([wp / w, hp / h, wp / w, hp / h])  # in prototype cells
    cols = torch.arange(wp, dtype=logits.dtype).view(1, 1, wp) + 0.5
    rows = torch.arange(hp, dtype=logits.dtype).view(1, hp, 1) + 0.5
    x0, y0, x1, y1 = (b[:, i].view(n, 1, 1) for i in range(4))
    probs = logits.sigmoid() * ((cols >= x0) & (cols < x1) & (rows >= y0) & (rows < y1))
    up = torch.nn.functional.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0]
    return up > mask_thr


def peer_postprocess(outputs: list[torch.Tensor], nms_free: bool, size: tuple[int, int], max_det: int, post: dict,
                     masks: str) -> list[dict]:
    """A peer graph's outputs (batch 1) -> [{boxes, scores, labels, masks}], with ``post``'s thresholds."""
    import torchvision

    pred, proto = sorted(outputs, key=lambda t: t.ndim)  # (1, K, 6 + M) or (1, 4 + C + M, A); (1, M, Hp, Wp)
    m = proto.shape[1]
    if nms_free:  # rows: x1 y1 x2 y2 score class coefficients
        rows = pred[0]
        keep = (rows[:, 4] > post["score_thr"]).nonzero()[:, 0]
        keep = keep[rows[keep, 4].argsort(descending=True)][:max_det]
        boxes, scores, labels, coef = rows[keep, :4], rows[keep, 4], rows[keep, 5].long(), rows[keep, 6:]
    else:  # columns: cx cy w h, class scores, coefficients
        rows = pred[0].T
        best, labels = rows[:, 4:rows.shape[1] - m].max(1)
        keep = (best > post["score_thr"]).nonzero()[:, 0]
        if len(keep) > post["pre_nms_topk"]:
            keep = keep[best[keep].topk(post["pre_nms_topk"]).indices]
        boxes = torchvision.ops.box_convert(rows[keep, :4], "cxcywh", "xyxy")
        order = torchvision.ops.batched_nms(boxes, best[keep], labels[keep], post["iou_thr"])[:max_det]
        keep = keep[order]
        boxes, scores, labels, coef = boxes[order], best[keep], labels[keep], rows[keep, rows.shape[1] - m:]
    h, w = size
    boxes = torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h), boxes[:, 2].clamp(0, w),
                         boxes[:, 3].clamp(0, h)], 1)
    return [{"boxes": boxes, "scores": scores, "labels": labels,
             "masks": peer_masks(coef, proto[0], boxes, size, post["mask_thr"], masks)}]


def peer_jobs(peer: Peer, size: int, args: argparse.Namespace, workdir: Path, post: dict) -> list[Job]:
    """The peer's rows at ``size``: eager forward; per graph backend, forward and end2end once per ``--max-det``."""
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))  # its input: RGB in [0, 1]
    feed = {"images": x.numpy()}
    nms_free = peer.name in NMS_FREE
    base = {"model": peer.name, "size": size, "batch": 1, "dtype": "fp32", "threads": args.threads,
            "params_m": round(sum(p.numel() for p in peer.eager.parameters()) / 1e6, 3),
            "ultralytics": peer.version, "config": f"{peer.name}.yaml", "cls_bias": args.peer_cls_bias}
    jobs: list[Job] = []
    if "eager" in args.backends:
        topk = " + the top-k (one-to-one head)" if nms_free else ""
        jobs.append(({**base, "backend": "eager", "stage": "forward",
                      "includes": PEER_INCLUDES["eager"].format(topk=topk)}, lambda: peer.eager(x)))
    backends = [b for b in ("onnx", "openvino") if b in args.backends]
    if not backends:
        return jobs
    onnx_path, export_s = peer_export(peer, size, workdir)
    kind = "nms_free" if nms_free else "raw"
    base = {**base, "export_s": export_s, "graph": "nms_free" if nms_free else "raw_head"}
    for backend in backends:
        if backend == "onnx":
            import onnxruntime as ort

            sess = ort_session(onnx_path, args.threads, args.ort_spinning)
            names = [o.name for o in sess.get_outputs()]
            rec = {**base, "backend": "onnx", "onnxruntime": ort.__version__, "ort_spinning": args.ort_spinning,
                   "size_mb": round(onnx_path.stat().st_size / 2**20, 2)}
            jobs += graph_jobs(rec, lambda s=sess, n=names: s.run(n, feed),
                               lambda s=sess, n=names: [torch.from_numpy(a) for a in s.run(n, feed)],
                               kind, (size, size), args, post)
        else:
            import openvino as ov

            from fourm21.inference.runners import OpenVinoRunner

            xml, source = peer_openvino(peer, size, onnx_path)
            runner = OpenVinoRunner(xml, None, "f32", args.threads)
            request = runner.request_for(tuple(x.shape))  # what runner.run(x) uses
            rec = {**base, "backend": "openvino", "openvino": ov.__version__.split("-")[0],
                   "ov_precision": runner.precision, "ir_from": source,
                   "size_mb": round((xml.stat().st_size + xml.with_suffix(".bin").stat().st_size) / 2**20, 2)}
            jobs += graph_jobs(rec, lambda r=request: r.infer(feed),
                               lambda r=runner: list(r.run(x).values()), kind, (size, size), args, post)
    return jobs


def graph_jobs(base: dict, forward: Callable[[], object], outputs: Callable[[], list[torch.Tensor]], kind: str,
               size: tuple[int, int], args: argparse.Namespace, post: dict) -> list[Job]:
    """forward (the graph alone) and end2end (+ ``peer_postprocess``) once per ``--max-det`` value."""
    first = outputs()
    pred = min(first, key=lambda t: t.ndim)
    graph = {"graph_topk": int(pred.shape[1])} if kind == "nms_free" else {"anchors": int(pred.shape[2])}
    includes = PEER_INCLUDES[f"{kind}_graph"].format(k=graph.get("graph_topk"))
    jobs: list[Job] = [({**base, "stage": "forward", **graph, "includes": includes}, forward)]
    for max_det in args.max_det:
        def fn(max_det: int = max_det) -> list[dict]:
            return peer_postprocess(outputs(), kind == "nms_free", size, max_det, post, args.peer_masks)
        with torch.inference_mode():
            dets = detections(fn())
        jobs.append(({**base, "stage": "end2end", **graph, "max_det": max_det, "detections": dets, **post,
                      "mask_assembly": args.peer_masks,
                      "includes": PEER_INCLUDES[f"{kind}_end2end"].format(masks=MASKS[args.peer_masks])}, fn))
    return jobs


# ---------------------------------------------------------------------------------------------- summary


def summaries(lines: list[dict], size: int, args: argparse.Namespace) -> list[dict]:
    """One line per backend on which fourm21 and a peer were both timed: fourm21 median / peer median, forward
    against forward and fourm21's end2end_graph (eager: end2end) against the peer's end2end, per max_det."""
    timed = [r for r in lines if "median_ms" in r]
    ours = list(dict.fromkeys(r["model"] for r in timed if r["model"] not in PEERS))
    out = []
    for backend in args.backends:
        peers = [p for p in args.peers if any(r["model"] == p and r["backend"] == backend for r in timed)]
        if not peers or not any(r["model"] in ours and r["backend"] == backend for r in timed):
            continue
        stage = "end2end" if backend == "eager" else "end2end_graph"

        def med(model: str, stage: str, max_det: int | None = None, backend: str = backend) -> float | None:
            return next((r["median_ms"] for r in timed if r["model"] == model and r["backend"] == backend
                         and r["stage"] == stage and r.get("max_det") == max_det), None)

        def ratio(a: float | None, b: float | None) -> float | None:
            return round(a / b, 3) if a and b else None

        line: dict[str, Any] = {"size": size, "backend": backend,
                                "ratio": "fourm21 median_ms / peer median_ms (below 1: fourm21 is faster)",
                                "fourm21_end2end_stage": stage, "peer_end2end_stage": "end2end"}
        # on a graph backend fourm21 has two end-to-end paths: the end2end=true graph (the summary's) and the
        # default export's raw graph + fourm21's decode in PyTorch (what fourm21.load runs): both are compared
        extra = {"end2end": "_raw_graph"} if stage != "end2end" else {}
        if extra:
            line["fourm21_end2end_raw_graph_stage"] = "end2end"
        medians: dict[str, dict] = {}
        for m, stages in [(m, [stage, *extra]) for m in ours] + [(p, ["end2end"]) for p in peers]:
            medians[m] = {"forward": med(m, "forward")}
            for e2e in stages:
                medians[m][e2e] = {str(d): med(m, e2e, d) for d in args.max_det}
                if all(v is None for v in medians[m][e2e].values()):
                    del medians[m][e2e]
        dets = {m: {str(r["max_det"]): r["detections"] for r in timed if r["model"] == m
                          and r["backend"] == backend and r["stage"] == ("end2end" if m in peers else stage)}
                      for m in medians}
        for m in ours:
            for p in peers:
                line[f"{m}_vs_{p}_forward"] = ratio(medians[m]["forward"], medians[p]["forward"])
                for own, suffix in ((stage, ""), *extra.items()):
                    if own not in medians[m] or "end2end" not in medians[p]:
                        continue
                    e2e = {d: ratio(medians[m][own][d], medians[p]["end2end"][d]) for d in medians[p]["end2end"]}
                    if any(v is not None for v in e2e.values()):
                        line[f"{m}_vs_{p}_end2end{suffix}"] = e2e
                        if p == REFERENCE:
                            line[f"{m}_end2end_target"] = f"<= {END2END_TARGET} x {REFERENCE}"
                            line[f"{m}_end2end{suffix}_meets_target"] = {
                                d: v <= END2END_TARGET if v is not None else None for d, v in e2e.items()}
        line["medians_ms"] = medians
        line["detections"] = {m: d for m, d in dets.items() if d}
        out.append({"summary": line})
    return out


def fallback_settings(size: int, args: argparse.Namespace) -> dict:
    """The detection and mask head values of ``model=lite``, for peers timed beside a model without those heads."""
    heads = model_config("lite", size, args)["heads"]
    det = heads["det"]
    return {"score_thr": float(det["score_thr"]), "iou_thr": float(det["iou_thr"]),
            "pre_nms_topk": int(det["pre_nms_topk"]), "mask_thr": float(heads.get("inst", {}).get("mask_thr", 0.5))}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    emit({"machine": machine(), "threads": args.threads, "runs": args.runs, "warmup": args.warmup,
          "load_1m": load_average(), "code": code_state(), "argv": sys.argv[1:] if argv is None else argv})
    peers = load_peers(args)
    names = [None] if args.ckpt else args.models
    with tempfile.TemporaryDirectory(prefix="fourm21_bench_") as tmp:
        for size in args.sizes:
            ours: list[Job] = []
            post: dict = {}
            for name in names:
                jobs, settings = jobs_ours(name, size, args, Path(tmp))
                ours += jobs
                post = post or settings
            theirs: list[Job] = []
            for peer in peers:
                theirs += peer_jobs(peer, size, args, Path(tmp), post or fallback_settings(size, args))
            torch.set_num_threads(args.threads)  # ultralytics' exporter resets torch's thread count on a CPU
            for line in summaries(run_jobs(theirs + ours, args.runs, args.warmup), size, args):
                emit(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
