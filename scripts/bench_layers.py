"""Where an exported fourm21 graph spends its time: per part (backbone, neck, each head, the decoding) and per op.

Exports a model (random weights, as ``bench_cpu_latency.py`` builds it) to the raw-output ONNX graph and the
``end2end=true`` graph, runs each ``--runs`` times with the runtime's own profiler on (ONNX Runtime's
``enable_profiling``; OpenVINO's ``PERF_COUNT``), and prints one JSON line per (model, backend, graph) with
the wall-clock median and the kernel time per part and per op type, in ms per run. A node's part is the
module path the exporter wrote into its name (``/net/<part>/...``); nodes outside the network (the decoding
the end-to-end graph adds, the input normalisation's constants) count as ``decode`` / ``other``.
Kernel times add up to less than the wall-clock time (layout reorders between nodes, the runtime's own
overhead), and the profiler itself slows both a little: compare parts within one line, not with
``bench_cpu_latency.py``'s medians.

    python scripts/bench_layers.py                                   # model=lite, 320 px, ONNX Runtime and OpenVINO
    python scripts/bench_layers.py --models lite multitask --size 640 --backends onnx
    python scripts/bench_layers.py --size 64 --runs 2 --overrides model.neck.channels=16   # seconds (the test)
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cpu_latency import build, emit, load_average, machine, ort_session  # noqa: E402

BACKENDS = ("onnx", "openvino")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["lite"], help="fourm21/configs/model/<name>.yaml (default: lite)")
    p.add_argument("--size", type=int, default=320, help="square input side")
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    p.add_argument("--runs", type=int, default=20, help="profiled runs per graph (after --warmup)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--num-classes", type=int, default=80)
    p.add_argument("--num-image-classes", type=int, default=10)
    p.add_argument("--top", type=int, default=12, help="op types listed per line")
    p.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides, e.g. model.neck.channels=32")
    args = p.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.threads < 1:
        p.error("--runs and --threads must be >= 1, --warmup >= 0")
    args.ckpt = None  # bench_cpu_latency.build reads it
    return args


def part_of(node_name: str) -> str:
    """``/net/det/cls_tower/...`` -> ``det``; ``/net/backbone/Sub`` -> ``backbone``; anything else -> ``decode``."""
    parts = node_name.strip("/").split("/")
    return parts[1] if len(parts) > 2 and parts[0] == "net" else "decode"


def summarise(times: list[float], kernels: list[tuple[str, str, float]], runs: int, top: int) -> dict:
    """Wall-clock median and the kernel ms per run by part and by op type (``kernels``: (node, op, ms total))."""
    by_part: collections.Counter = collections.Counter()
    by_op: collections.Counter = collections.Counter()
    for node, op, ms in kernels:
        by_part[part_of(node)] += ms / runs
        by_op[op] += ms / runs
    return {"median_ms": round(statistics.median(times), 2), "min_ms": round(min(times), 2),
            "kernel_ms": round(sum(by_part.values()), 2),
            "parts_ms": {k: round(v, 2) for k, v in by_part.most_common()},
            "ops_ms": {k: round(v, 2) for k, v in by_op.most_common(top)}}


def timed(fn, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def profile_onnx(path: Path, x: np.ndarray, args: argparse.Namespace, workdir: Path) -> dict:
    import onnxruntime as ort

    warm = ort_session(path, args.threads)
    times = timed(lambda: warm.run(None, {"images": x}), args.runs, args.warmup)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = args.threads, 1, 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.enable_profiling = True
    opts.profile_file_prefix = str(workdir / path.stem)
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for _ in range(args.runs):
        sess.run(None, {"images": x})
    events = json.loads(Path(sess.end_profiling()).read_text())
    kernels = [(e["name"][: -len("_kernel_time")], e["args"].get("op_name", "?"), e["dur"] / 1e3) for e in events
               if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    return {"onnxruntime": ort.__version__, **summarise(times, kernels, args.runs, args.top)}


def profile_openvino(path: Path, x: np.ndarray, args: argparse.Namespace) -> dict:
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": args.threads}
    model = ov.convert_model(str(path))
    request = core.compile_model(model, "CPU", config).create_infer_request()
    times = timed(lambda: request.infer({0: x}), args.runs, args.warmup)
    profiled = core.compile_model(model, "CPU", {**config, "PERF_COUNT": "YES"}).create_infer_request()
    profiled.infer({0: x})
    kernels: list[tuple[str, str, float]] = []
    for _ in range(args.runs):  # the counters are the last run's: summed run by run
        profiled.infer({0: x})
        kernels += [(p.node_name, p.node_type, p.real_time.total_seconds() * 1e3) for p in profiled.profiling_info]
    return {"openvino": ov.__version__.split("-")[0], **summarise(times, kernels, args.runs, args.top)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    emit({"machine": machine(), "threads": args.threads, "size": args.size, "runs": args.runs,
          "load_1m": load_average(), "argv": sys.argv[1:] if argv is None else argv})
    from fourm21.export import formats

    x = np.random.default_rng(0).standard_normal((1, 3, args.size, args.size)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="fourm21_layers_") as tmp:
        for name in args.models:
            model, label = build(name, args.size, args)
            graphs = {"raw": Path(tmp) / f"{label}_raw.onnx", "end2end": Path(tmp) / f"{label}_end2end.onnx"}
            formats.export_onnx(model, graphs["raw"], args.size, dynamo=False)
            formats.export_onnx_end2end(model, graphs["end2end"], args.size)
            for backend in args.backends:
                for graph, path in graphs.items():
                    record = {"model": label, "size": args.size, "backend": backend, "graph": graph}
                    result = profile_onnx(path, x, args, Path(tmp)) if backend == "onnx" else \
                        profile_openvino(path, x, args)
                    emit({**record, **result, "load_1m": load_average()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
