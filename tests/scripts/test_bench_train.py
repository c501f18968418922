"""scripts/bench_train.py --smoke times every part of the fourm21 training step and prints well-formed JSON lines;
the ultralytics peers, when importable, with their own loss and data pipeline (else a skipped line each)."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.scripts.bench_helpers import script_env, ultralytics_dir

SCRIPT = REPO / "scripts" / "bench_train.py"
LINE_KEYS = {"model", "part", "img_s", "ms_per_batch", "peak_mem_mb", "device", "size", "batch"}
PARTS = {"data", "step", "forward", "loss", "backward", "optimizer"}
HEADS = ("cls", "det", "inst", "sem")
MODELS = ("lite", "default")
PEERS = ("yolo26n-seg", "yolo11n-seg", "yolov8n-seg")
PEER_PARTS = {"data", "data_decode", "step", "forward", "loss", "backward", "optimizer", "loss.seg"}


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
    assert not any(r.get("model") in PEERS for r in lines)

    summary = lines[-1]["summary"]
    assert not any("_vs_yolo" in k for k in summary)  # no peer in this run
    for model in MODELS:
        assert set(summary[f"{model}_head_share"]) == set(HEADS)
        assert all(s["total"] > 0 for s in summary[f"{model}_head_share"].values())
        assert set(summary[f"{model}_breakdown_share"]) == {"forward", "loss", "backward", "optimizer"}
    assert summary["data"] == "synthetic"


def test_data_only_times_the_pipeline_alone_and_skips_the_peers_without_ultralytics(tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--data-only", "--models", "lite", *PEERS, "--data",
                          "synthetic"], cwd=REPO, env=script_env(False, tmp_path), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["part"] for r in lines if "part" in r] == ["data"]
    skipped = [r for r in lines if "skipped" in r]
    assert [r["model"] for r in skipped] == list(PEERS) and all("ultralytics" in r["skipped"] for r in skipped)
    summary = lines[-1]["summary"]
    assert all(summary[f"lite_vs_{peer}_data"] is None for peer in PEERS) and "lite_breakdown_share" not in summary


@pytest.mark.skipif(ultralytics_dir() is None, reason="ultralytics not importable (PYTHONPATH, FOURM21_ULTRALYTICS)")
def test_the_peers_with_their_own_loss_and_data_pipeline(tmp_path):
    peers = ("yolo26n-seg", "yolov8n-seg")
    res = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--models", "lite", *peers, "--data", "synthetic"],
                         cwd=tmp_path, env=script_env(True, tmp_path), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    info = {r["model"]: r["info"] for r in lines if "info" in r}
    assert info["yolo26n-seg"]["criterion"] == "E2ELoss(SegmentLoss26)"
    assert info["yolov8n-seg"]["criterion"] == "v8SegmentationLoss"
    img_s = {}
    for model in ("lite", *peers):
        mine = {r["part"]: r for r in lines if r.get("model") == model and "part" in r}
        if model != "lite":
            assert set(mine) == PEER_PARTS and info[model]["config"] == f"{model}.yaml"
        assert all(r["img_s"] > 0 and r["size"] == 64 and r["batch"] == 2 for r in mine.values())
        img_s[model] = {part: r["img_s"] for part, r in mine.items()}
    summary = lines[-1]["summary"]
    for peer in peers:  # fourm21's img/s over the peer's
        assert summary[f"lite_vs_{peer}_step"] == round(img_s["lite"]["step"] / img_s[peer]["step"], 3)
        assert summary[f"lite_vs_{peer}_data"] == round(img_s["lite"]["data"] / img_s[peer]["data"], 3)
        assert summary[f"lite_vs_{peer}_data_decode"] == round(img_s["lite"]["data"] / img_s[peer]["data_decode"], 3)
    assert "lite_vs_yolo11n-seg_step" not in summary
