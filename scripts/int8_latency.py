"""Latency of exported graphs (fourm21-export directories: ONNX or OpenVINO, f32 or int8), timed round-robin.

    python scripts/int8_latency.py runs/int8/pets/onnx_f32/export runs/int8/pets/onnx_int8/export \
        runs/int8/pets/ov_f32/export runs/int8/pets/ov_int8/export --threads 2 --runs 100 --warmup 20

Each export runs the network only (``session.run`` / ``infer``: numpy in, numpy out) on one letterboxed
batch-1 input at its training size: ONNX Runtime with ``intra_op_num_threads = --threads``, OpenVINO through
``OpenVinoRunner`` (static shape, ``INFERENCE_NUM_THREADS``, latency hint, the export's precision). One run of
every export per round, so all see the same machine load. Prints a markdown table of median / min ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import yaml


def runner_for(directory: Path, threads: int):
    """A callable that runs ``directory``'s graph on a (1, 3, S, S) float32 array, and its label."""
    meta = yaml.safe_load((directory / "config.yaml").read_text())["meta"]
    kind = "int8" if meta.get("int8") else "f32"
    if (directory / "model.onnx").is_file():
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(str(directory / "model.onnx"), options, providers=["CPUExecutionProvider"])
        return (lambda x: session.run(None, {"images": x})), f"ONNX Runtime {kind}", int(meta["img_size"])
    import torch

    from fourm21.inference.runners import OpenVinoRunner

    runner = OpenVinoRunner(directory / "model.xml", meta.get("output_names"),
                            str(meta.get("openvino_precision") or "f32"), threads=threads)
    return (lambda x: runner.run(torch.from_numpy(x))), f"OpenVINO {kind}", int(meta["img_size"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("exports", nargs="+", type=Path, help="export directories")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=20)
    args = ap.parse_args()
    runners = [(d, *runner_for(d, args.threads)) for d in args.exports]
    inputs = {size: np.random.default_rng(0).integers(0, 256, (1, 3, size, size)).astype(np.float32)
              for size in {r[3] for r in runners}}
    times: dict[Path, list[float]] = {d: [] for d, *_ in runners}
    for i in range(args.warmup + args.runs):
        for d, run, _, size in runners:
            start = time.perf_counter()
            run(inputs[size])
            if i >= args.warmup:
                times[d].append(1e3 * (time.perf_counter() - start))
    print("| export | backend | median ms | min ms |\n|---|---|---|---|")
    for d, _, label, _ in runners:
        print(f"| `{d}` | {label} | {statistics.median(times[d]):.1f} | {min(times[d]):.1f} |")
    print(json.dumps({str(d): {"median_ms": statistics.median(t), "min_ms": min(t)} for d, t in times.items()}))


if __name__ == "__main__":
    main()
