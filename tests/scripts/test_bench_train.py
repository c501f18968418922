"""scripts/bench_train.py --smoke times every part of the fourm21 training step and prints well-formed JSON lines."""

import json
import os
import subprocess
import sys

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "bench_train.py"
LINE_KEYS = {"model", "part", "img_s", "ms_per_batch", "peak_mem_mb", "device", "size", "batch"}
PARTS = {"data", "step", "forward", "loss", "backward", "optimizer"}
HEADS = ("cls", "det", "inst", "sem")
MODELS = ("lite", "default")


def test_smoke_run_of_both_fourm21_models_on_synthetic_data():
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    res = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--models", *MODELS, "--data", "synthetic"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [json.loads(line) for line in res.stdout.splitlines()]  # every stdout line is JSON
    head = lines[0]
    assert head["data"]["kind"] == "synthetic" and head["data"]["instances_per_img"] > 0
    assert head["size"] == 64 and head["batch"] == 2 and head["device"] == "cpu"
    assert "cpu" in head["machine"] and len(head["load_avg_start"]) == 3

    parts = [r for r in lines if "part" in r]
    for r in parts:
        assert set(r) >= LINE_KEYS, r
        assert r["img_s"] > 0 and r["ms_per_batch"] > 0 and r["peak_mem_mb"] > 0, r
        assert r["size"] == 64 and r["batch"] == 2 and r["device"] == "cpu"
    for model in MODELS:
        mine = {r["part"]: r for r in parts if r["model"] == model}
        assert set(mine) == PARTS | {f"loss.{h}" for h in HEADS}, sorted(mine)
        for h in HEADS:
            line = mine[f"loss.{h}"]
            assert line["loss_fwd_ms"] > 0 and line["bwd_ms"] > 0
            assert abs(line["loss_fwd_ms"] + line["bwd_ms"] - line["ms_per_batch"]) < 0.1
        assert mine["loss.det"]["assign_ms"] > 0
        assert mine["data"]["ms_per_img"] > 0
    assert not any(r.get("model") == "yolov8n-seg" for r in lines)

    summary = lines[-1]["summary"]
    for model in MODELS:
        assert summary[f"{model}_vs_yolo_step"] is None  # no YOLO in this run
        assert set(summary[f"{model}_head_share"]) == set(HEADS)
        assert all(s["total"] > 0 for s in summary[f"{model}_head_share"].values())
        assert set(summary[f"{model}_breakdown_share"]) == {"forward", "loss", "backward", "optimizer"}
    assert summary["data"] == "synthetic"


def test_data_only_times_the_pipeline_alone():
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    res = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--data-only", "--models", "lite", "--data",
                          "synthetic"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["part"] for r in lines if "part" in r] == ["data"]
    assert lines[-1]["summary"]["lite_vs_yolo_data"] is None and "lite_breakdown_share" not in lines[-1]["summary"]
