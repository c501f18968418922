"""scripts/bench_flops.py at a tiny size: FLOPs per part that add up, a backward of twice the forward, activation
memory, and H100 predictions that follow from them by the stated formula."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "bench_flops.py"


def test_flops_parts_memory_and_the_prediction(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    res = subprocess.run([sys.executable, str(SCRIPT), "--models", "lite", "vit_small", "--size", "64", "--batch", "1",
                          "--mfu", "0.3"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    lite, vit, ref = lines
    assert ref["reference"]["model"] == "yolov8m-seg"
    for rec in (lite, vit):
        parts = rec["fwd_gflop"]
        assert {"backbone", "neck", "head:det", "head:inst", "head:sem"} <= set(parts) and "head:cls" not in parts
        assert sum(parts.values()) == pytest.approx(rec["fwd_gflop_total"], abs=0.005)
        assert all(v >= 0 for v in parts.values()) and parts["backbone"] > 0 and rec["loss_gflop"] > 0
        assert rec["bwd_gflop"] == pytest.approx(2 * rec["fwd_gflop_total"], abs=0.002) and rec["act_mb"] > 0
        pred = rec["h100_predicted"]["mfu_0.3"]
        train = rec["fwd_gflop_total"] + rec["loss_gflop"] + rec["bwd_gflop"]
        assert pred["infer_img_s"] == pytest.approx(0.3 * 989e3 / rec["fwd_gflop_total"], rel=0.01)
        assert pred["train_img_s"] == pytest.approx(0.3 * 989e3 / train, rel=0.01)
        assert rec["h100_predicted"]["max_train_batch_bf16"] > 0
    # a ViT-S backbone is far heavier than lite's MobileNetV4, and its (ungrouped) backward is what the counter counts
    assert vit["fwd_gflop"]["backbone"] > 5 * lite["fwd_gflop"]["backbone"]
    assert vit["bwd_gflop_counter"] == pytest.approx(vit["bwd_gflop"], rel=0.1)
