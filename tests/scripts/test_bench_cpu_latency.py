"""scripts/bench_cpu_latency.py runs on the CPU with tiny settings and prints well-formed JSON lines."""

import json
import os
import subprocess
import sys

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "bench_cpu_latency.py"
TIMING = {"median_ms", "min_ms", "max_ms", "mean_ms", "runs", "warmup"}


def bench(*args: str) -> list[dict]:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    res = subprocess.run([sys.executable, str(SCRIPT), "--sizes", "64", "--runs", "3", "--warmup", "1",
                          "--max-det", "5", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return [json.loads(line) for line in res.stdout.splitlines()]  # every stdout line is JSON


def check_timing(rec: dict) -> None:
    assert set(rec) >= TIMING, rec
    assert rec["runs"] == 3 and rec["warmup"] == 1
    assert 0 < rec["min_ms"] <= rec["median_ms"] <= rec["max_ms"]


def test_eager_lines_and_the_yolo_reference_or_its_skip_message():
    lines = bench("--backends", "eager")
    assert "machine" in lines[0] and lines[0]["runs"] == 3
    ours = [r for r in lines if r.get("model") == "lite"]
    assert {r["stage"] for r in ours} == {"forward", "end2end"}
    for r in ours:
        check_timing(r)
        assert r["backend"] == "eager" and r["size"] == 64 and r["batch"] == 1 and r["dtype"] == "fp32"
        assert 0 < r["params_m"] <= 5
    e2e = next(r for r in ours if r["stage"] == "end2end")
    assert e2e["max_det"] == 5 and 0 <= e2e["detections"] <= 5
    yolo = [r for r in lines if r.get("model") == "yolov8n-seg"]
    assert len(yolo) == 1
    if "skipped" in yolo[0]:
        assert "ultralytics" in yolo[0]["skipped"]
    else:
        check_timing(yolo[0])


def test_onnx_runtime_int8_and_openvino_lines():
    lines = bench("--backends", "onnx", "int8", "openvino", "--no-yolo", "--overrides", "model.neck.channels=16")
    assert not any(r.get("model") == "yolov8n-seg" for r in lines)
    for backend in ("onnx", "int8", "openvino"):
        ours = [r for r in lines if r.get("backend") == backend]
        assert {r["stage"] for r in ours} == {"forward", "end2end", "end2end_graph"}, lines
        for r in ours:
            check_timing(r)
            assert r["size"] == 64 and r["export_s"] > 0 and r["size_mb"] > 0
        graph = next(r for r in ours if r["stage"] == "end2end_graph")
        assert graph["detections"] <= min(5, graph["graph_detections"])
    for backend in ("onnx", "openvino"):
        fp32 = next(r for r in lines if r.get("backend") == backend and r["stage"] == "forward")
        assert fp32["max_abs_diff"] < 1e-3  # the fp32 graph computes what the PyTorch network does
    assert {r["ov_precision"] for r in lines if r.get("backend") == "openvino"} == {"f32"}
