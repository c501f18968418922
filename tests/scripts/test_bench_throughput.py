"""scripts/bench_throughput.py runs on the CPU with tiny settings and prints well-formed JSON lines."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "bench_throughput.py"
FIELDS = {"model", "arch", "mode", "batch", "size", "img_s", "ms_per_batch", "peak_mem_gb", "params_m",
          "gflops_per_img", "tflops_s", "mfu", "precision", "device", "compile"}
TINY = ["--device", "cpu", "--size", "128", "--batch", "2", "--iters", "1", "--warmup", "1"]


def bench(*args: str) -> list[dict]:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    res = subprocess.run([sys.executable, str(SCRIPT), *TINY, *args], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return [json.loads(line) for line in res.stdout.splitlines()]  # every stdout line is JSON


def check_measurement(rec: dict, model: str, mode: str) -> None:
    assert set(rec) >= FIELDS, rec
    assert (rec["model"], rec["mode"], rec["batch"], rec["size"]) == (model, mode, 2, 128)
    assert rec["img_s"] > 0 and rec["ms_per_batch"] > 0
    # 2 images per batch; both figures are rounded in the output, hence a relative tolerance
    assert rec["img_s"] == pytest.approx(2e3 / rec["ms_per_batch"], rel=5e-3, abs=2e-3)
    assert rec["peak_mem_gb"] is None and rec["mfu"] is None  # no GPU: no memory figure, no peak for MFU
    assert rec["precision"] == "fp32" and rec["device"] == "cpu" and rec["compile"] == "off"
    assert rec["params_m"] > 1 and rec["gflops_per_img"] > 0.1


def test_fourm21_and_backbone_lines_and_summary(tmp_path: Path):
    out = tmp_path / "throughput.jsonl"
    lines = bench("--models", "fourm21", "backbone", "--json-out", str(out))
    assert [json.loads(line) for line in out.read_text().splitlines()] == lines
    assert "machine" in lines[0] and lines[0]["peak_tflops"] is None
    measured = lines[1:-1]
    assert [(r["model"], r["mode"]) for r in measured] == [
        ("fourm21", "infer"), ("fourm21", "train"), ("backbone", "infer"), ("backbone", "train")]
    for rec in measured:
        check_measurement(rec, rec["model"], rec["mode"])
    ours = measured[0]
    assert "convnext_tiny" in ours["arch"] and "cls,det,inst,sem" in ours["arch"]
    assert 0 <= ours["detections_per_img"] <= 100
    assert ours["gflops_per_img"] > measured[2]["gflops_per_img"]  # backbone + neck + heads > backbone
    summary = lines[-1]["summary"]
    ratios = summary["per_batch"]["2"]
    assert ratios["train_vs_backbone"] == pytest.approx(measured[1]["img_s"] / measured[3]["img_s"], abs=1e-2)
    assert ratios["infer_vs_yolov8m_seg"] is None  # not measured in this run
    by_target = {t["target"]: t for t in summary["targets"]}
    backbone_target = by_target["training img/s >= 0.8x the bare backbone's"]
    assert backbone_target["met"] == (backbone_target["value"] >= 0.8)
    assert by_target["inference MFU >= 15 %"]["met"] is None
    assert not any("batch 64" in t["target"] for t in summary["targets"])  # the memory target is for batch 64


@pytest.mark.slow
def test_single_task_models_and_the_yolo_reference_or_its_skip_message():
    lines = bench("--models", "classifier", "fcos", "maskrcnn", "yolov8m-seg", "--size", "64")
    measured = [r for r in lines[1:-1] if "skipped" not in r]
    for rec in measured:
        assert set(rec) >= FIELDS, rec
        assert rec["size"] == 64 and rec["img_s"] > 0
    assert {(r["model"], r["mode"]) for r in measured} >= {(m, mode) for m in ("classifier", "fcos", "maskrcnn")
                                                             for mode in ("infer", "train")}
    yolo = [r for r in lines if r.get("model") == "yolov8m-seg"]
    if yolo and "skipped" in yolo[0]:
        assert len(yolo) == 1 and "ultralytics" in yolo[0]["skipped"]
    else:
        assert {r["mode"] for r in yolo} == {"infer", "train"}
    combined = lines[-1]["summary"]["per_batch"]["2"]["single_task_combined_img_s"]
    speeds = {(r["model"], r["mode"]): r["img_s"] for r in measured}
    for mode in ("infer", "train"):
        expected = 1 / sum(1 / speeds[(m, mode)] for m in ("classifier", "fcos", "maskrcnn"))
        assert combined[mode] == pytest.approx(expected, rel=0.02, abs=0.01)
