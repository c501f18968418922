"""scripts/bench_cpu_latency.py runs on the CPU with tiny settings and prints well-formed JSON lines; the
ultralytics peers, when importable, are timed on the same backends and compared in one summary line per backend."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO
from tests.scripts.bench_helpers import load_script, script_env, ultralytics_dir

SCRIPT = REPO / "scripts" / "bench_cpu_latency.py"
TIMING = {"median_ms", "min_ms", "max_ms", "mean_ms", "runs", "warmup"}
PEERS = ("yolo26n-seg", "yolo11n-seg", "yolov8n-seg")
SHARED = {"score_thr", "iou_thr", "pre_nms_topk", "mask_thr"}


def bench(*args: str, env: dict | None = None) -> list[dict]:
    """The script's JSON lines; the peers timed where ultralytics is importable, unless ``env`` says otherwise."""
    if env is None:
        env = script_env(True) if ultralytics_dir() else dict(os.environ, PYTHONWARNINGS="ignore")
    res = subprocess.run([sys.executable, str(SCRIPT), "--sizes", "64", "--runs", "3", "--warmup", "1", "--max-det",
                          "5", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return [json.loads(line) for line in res.stdout.splitlines()]  # every stdout line is JSON


def check_timing(rec: dict) -> None:
    assert set(rec) >= TIMING, rec
    assert rec["runs"] == 3 and rec["warmup"] == 1
    assert 0 < rec["min_ms"] <= rec["median_ms"] <= rec["max_ms"]
    assert rec["includes"], rec  # every timed record says what its time covers


def test_eager_lines_and_the_peers_or_their_skip_lines():
    lines = bench("--backends", "eager")
    assert "machine" in lines[0] and lines[0]["runs"] == 3
    ours = [r for r in lines if r.get("model") == "lite"]
    assert {r["stage"] for r in ours} == {"forward", "end2end"}
    for r in ours:
        check_timing(r)
        assert r["backend"] == "eager" and r["size"] == 64 and r["batch"] == 1 and r["dtype"] == "fp32"
        assert 0 < r["params_m"] <= 5
    e2e = next(r for r in ours if r["stage"] == "end2end")
    assert e2e["max_det"] == 5 and 0 <= e2e["detections"] <= 5 and set(e2e) >= SHARED
    summaries = [r["summary"] for r in lines if "summary" in r]
    for peer in PEERS:
        mine = [r for r in lines if r.get("model") == peer]
        if "skipped" in mine[0]:
            assert len(mine) == 1 and "ultralytics" in mine[0]["skipped"]
            continue
        assert [(r["backend"], r["stage"]) for r in mine] == [("eager", "forward")]
        check_timing(mine[0])
        assert mine[0]["config"] == f"{peer}.yaml"
        fwd = next(r for r in ours if r["stage"] == "forward")
        assert summaries[0][f"lite_vs_{peer}_forward"] == round(fwd["median_ms"] / mine[0]["median_ms"], 3)
    assert all(s["backend"] == "eager" for s in summaries)


def test_the_peers_are_skipped_by_name_without_ultralytics(monkeypatch, capsys, tmp_path):
    bench_cpu = load_script("bench_cpu_latency")
    monkeypatch.setitem(sys.modules, "ultralytics", None)  # its import raises ImportError
    for key, value in (("YOLO_CONFIG_DIR", str(tmp_path)), ("YOLO_OFFLINE", "1"), ("YOLO_VERBOSE", "False")):
        monkeypatch.setenv(key, value)  # what load_peers would set in this process
    assert bench_cpu.load_peers(bench_cpu.parse_args([])) == []
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["model"] for r in lines] == list(PEERS) and all("ultralytics" in r["skipped"] for r in lines)
    assert bench_cpu.load_peers(bench_cpu.parse_args(["--no-yolo"])) == []
    assert bench_cpu.load_peers(bench_cpu.parse_args(["--peers"])) == []
    assert capsys.readouterr().out == ""
    args = bench_cpu.parse_args(["--peers", "yolov8n-seg", "yolo26n-seg", "yolov8n-seg"])
    assert args.peers == ["yolov8n-seg", "yolo26n-seg"]


def test_peer_post_processing_keeps_the_thresholds_and_max_det():
    """The peers' end-to-end work outside their graphs, on made-up outputs of both graph kinds."""
    bench_cpu = load_script("bench_cpu_latency")
    post = {"score_thr": 0.05, "iou_thr": 0.6, "pre_nms_topk": 1000, "mask_thr": 0.5}
    g = torch.Generator().manual_seed(0)
    proto = torch.randn(1, 32, 16, 16, generator=g)
    # NMS-free: (1, K, 6 + 32) rows x1 y1 x2 y2 score class coefficients, some below score_thr
    xy = torch.rand(1, 20, 2, generator=g) * 40
    rows = torch.cat([xy, xy + 10 + torch.rand(1, 20, 2, generator=g) * 14, torch.linspace(0.9, 0.0, 20).view(1, 20, 1),
                      torch.randint(0, 80, (1, 20, 1), generator=g).float(), torch.randn(1, 20, 32, generator=g)], 2)
    for masks in ("paste", "full"):
        (p,) = bench_cpu.peer_postprocess([rows, proto], True, (64, 64), 5, post, masks)
        assert len(p["boxes"]) == 5 and p["masks"].shape == (5, 64, 64) and p["masks"].dtype == torch.bool
        assert torch.equal(p["scores"], rows[0, :5, 4])
        (p,) = bench_cpu.peer_postprocess([rows, proto], True, (64, 64), 100, post, masks)
        assert len(p["boxes"]) == int((rows[0, :, 4] > 0.05).sum()) < 20
        pad = 0 if masks == "paste" else 4  # full: cropped on the 4-pixel prototype cells, then upsampled
        outside = p["masks"].clone()
        for m, (x0, y0, x1, y1) in zip(outside, p["boxes"].tolist()):
            m[max(int(y0) - pad, 0):int(y1) + 1 + pad, max(int(x0) - pad, 0):int(x1) + 1 + pad] = False
        assert p["masks"].any() and not outside.any()  # cropped to the box
    # raw head: (1, 4 + 80 + 32, anchors) cx cy w h, class scores, coefficients; NMS leaves one of two twins
    n = 84
    cxcy, wh = torch.rand(2, n, generator=g) * 64, torch.full((2, n), 8.0)
    scores = torch.rand(80, n, generator=g) * 0.04  # below score_thr ...
    scores[3, :10] = torch.linspace(0.9, 0.5, 10)  # ... but for ten anchors of class 3
    cxcy[:, 1] = cxcy[:, 0]  # anchors 0 and 1 the same box: NMS keeps the better one
    raw = torch.cat([cxcy, wh, scores, torch.randn(32, n, generator=g)])[None]
    (p,) = bench_cpu.peer_postprocess([raw, proto], False, (64, 64), 100, post, "paste")
    assert (p["labels"] == 3).all() and 0 < len(p["boxes"]) <= 9
    assert not any(abs(v - float(scores[3, 1])) < 1e-6 for v in p["scores"].tolist())  # its twin anchor 0 won
    assert p["scores"][0] == pytest.approx(0.9) and p["masks"].shape == (len(p["boxes"]), 64, 64)
    (p,) = bench_cpu.peer_postprocess([proto, raw], False, (64, 64), 2, post, "paste")  # any output order
    assert len(p["boxes"]) == 2


def test_summary_ratios_are_the_medians_ratios():
    bench_cpu = load_script("bench_cpu_latency")
    args = bench_cpu.parse_args(["--backends", "onnx", "--max-det", "10", "100", "--peers", "yolo26n-seg",
                                 "yolov8n-seg"])

    def rec(model, stage, ms, max_det=None, dets=None):
        r = {"model": model, "backend": "onnx", "stage": stage, "median_ms": ms}
        return r if max_det is None else {**r, "max_det": max_det, "detections": dets}

    lines = [rec("yolo26n-seg", "forward", 40.0), rec("yolo26n-seg", "end2end", 50.0, 10, 10),
             rec("yolo26n-seg", "end2end", 60.0, 100, 100), rec("yolov8n-seg", "forward", 45.0),
             rec("yolov8n-seg", "end2end", 80.0, 10, 10), rec("yolov8n-seg", "end2end", 90.0, 100, 100),
             rec("lite", "forward", 30.0), rec("lite", "end2end", 35.0, 10, 10), rec("lite", "end2end", 36.0, 100, 100),
             rec("lite", "end2end_graph", 38.0, 10, 10), rec("lite", "end2end_graph", 54.0, 100, 100)]
    (line,) = bench_cpu.summaries(lines, 320, args)
    s = line["summary"]
    assert (s["size"], s["backend"], s["fourm21_end2end_stage"]) == (320, "onnx", "end2end_graph")
    assert s["lite_vs_yolo26n-seg_forward"] == 0.75 and s["lite_vs_yolov8n-seg_forward"] == round(30 / 45, 3)
    assert s["lite_vs_yolo26n-seg_end2end"] == {"10": 0.76, "100": 0.9}
    assert s["lite_end2end_meets_target"] == {"10": True, "100": False}
    assert s["lite_vs_yolov8n-seg_end2end"] == {"10": 0.475, "100": 0.6}
    assert "lite_end2end_meets_target" in s and "yolov8n-seg_end2end_meets_target" not in s
    assert s["medians_ms"]["lite"] == {"forward": 30.0, "end2end_graph": {"10": 38.0, "100": 54.0},
                                       "end2end": {"10": 35.0, "100": 36.0}}
    # the default export's path (raw graph + decode in PyTorch) against the same peer figures
    assert s["lite_vs_yolo26n-seg_end2end_raw_graph"] == {"10": 0.7, "100": 0.6}
    assert s["lite_end2end_raw_graph_meets_target"] == {"10": True, "100": True}
    assert s["detections"]["yolo26n-seg"] == {"10": 10, "100": 100}
    assert bench_cpu.summaries([r for r in lines if r["model"] == "lite"], 320, args) == []  # no peer: no line


def test_onnx_runtime_int8_openvino_and_the_peers_graphs_on_the_same_backends(tmp_path):
    """fourm21's graphs on every graph backend; where ultralytics is importable, in the same run (one export of
    fourm21's graphs for both), the peers' exported graphs on ONNX Runtime and OpenVINO and the summary lines."""
    peers = ultralytics_dir() is not None
    lines = bench("--backends", "onnx", "int8", "openvino", "--overrides", "model.neck.channels=16",
                  *(["--peers", "yolo26n-seg", "yolov8n-seg"] if peers else ["--no-yolo"]),
                  env=script_env(True, tmp_path) if peers else None)
    timed = [r for r in lines if "median_ms" in r]
    for r in timed:
        check_timing(r)
    for backend in ("onnx", "int8", "openvino"):
        ours = [r for r in timed if r["model"] == "lite" and r["backend"] == backend]
        assert {r["stage"] for r in ours} == {"forward", "end2end", "end2end_graph"}, lines
        for r in ours:
            assert r["size"] == 64 and r["export_s"] > 0 and r["size_mb"] > 0
        graph = next(r for r in ours if r["stage"] == "end2end_graph")
        assert graph["detections"] <= min(5, graph["graph_detections"]) and set(graph) >= SHARED
    for backend in ("onnx", "openvino"):
        fp32 = next(r for r in timed if r["model"] == "lite" and r["backend"] == backend and r["stage"] == "forward")
        assert fp32["max_abs_diff"] < 1e-3  # the fp32 graph computes what the PyTorch network does
    assert {r["ov_precision"] for r in timed if r["backend"] == "openvino"} == {"f32"}
    summaries = {s["backend"]: s for s in (r["summary"] for r in lines if "summary" in r)}
    if not peers:
        assert not any(r.get("model") in PEERS for r in lines) and not summaries
        return

    for peer, graph in (("yolo26n-seg", "nms_free"), ("yolov8n-seg", "raw_head")):
        mine = [r for r in timed if r["model"] == peer]
        assert {(r["backend"], r["stage"]) for r in mine} == {(b, s) for b in ("onnx", "openvino")
                                                              for s in ("forward", "end2end")}
        for r in mine:
            assert r["graph"] == graph and r["export_s"] > 0 and r["size_mb"] > 0 and r["cls_bias"] == "0"
            if r["stage"] == "end2end":  # fourm21's values; random weights with a zeroed class bias keep max_det
                lite = next(o for o in timed if o["model"] == "lite" and o["stage"] == "end2end_graph"
                            and o["backend"] == r["backend"])
                assert {k: r[k] for k in SHARED} == {k: lite[k] for k in SHARED}
                assert r["max_det"] == 5 and r["detections"] == 5 and r["mask_assembly"] == "paste"
        assert all(r["ir_from"] for r in mine if r["backend"] == "openvino")
    assert set(summaries) == {"onnx", "openvino"}  # int8: fourm21 only
    for backend, s in summaries.items():
        med = {(r["model"], r["stage"]): r["median_ms"] for r in timed if r["backend"] == backend}
        for peer in ("yolo26n-seg", "yolov8n-seg"):
            assert s[f"lite_vs_{peer}_forward"] == round(med["lite", "forward"] / med[peer, "forward"], 3)
            assert s[f"lite_vs_{peer}_end2end"] == {
                "5": round(med["lite", "end2end_graph"] / med[peer, "end2end"], 3)}
        assert s["lite_end2end_meets_target"] == {"5": s["lite_vs_yolo26n-seg_end2end"]["5"] <= 0.8}
        assert s["lite_vs_yolo26n-seg_end2end_raw_graph"] == {
            "5": round(med["lite", "end2end"] / med["yolo26n-seg", "end2end"], 3)}
        assert s["detections"]["yolo26n-seg"] == {"5": 5}
