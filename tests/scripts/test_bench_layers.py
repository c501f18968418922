"""scripts/bench_layers.py at a tiny size: per-part kernel times of both graphs in both runtimes, parts that add
up to the kernel total, the network's parts named from the exporter's node names, the decoding outside them."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
from bench_layers import part_of  # noqa: E402


def test_node_names_map_to_the_network_parts():
    assert part_of("/net/det/cls_tower/cls_tower.0/Conv") == "det"
    assert part_of("/net/backbone/Sub") == "backbone"
    assert part_of("/TopK") == "decode" and part_of("NonMaxSuppression_12") == "decode"


@pytest.mark.slow  # ~15 s idle (two exports, two OpenVINO compiles): make test-all; part_of above stays in make test
def test_parts_of_both_graphs_in_both_runtimes(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_layers.py"), "--size", "64", "--runs", "2",
                          "--warmup", "1", "--threads", "1", "--top", "100", "--overrides", "model.neck.channels=16"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    head, *records = [json.loads(x) for x in res.stdout.splitlines()]
    assert head["size"] == 64 and head["threads"] == 1
    assert {(r["backend"], r["graph"]) for r in records} == {(b, g) for b in ("onnx", "openvino")
                                                               for g in ("raw", "end2end")}
    for r in records:
        parts = r["parts_ms"]
        assert {"backbone", "neck", "det", "inst", "sem", "cls"} <= set(parts), parts
        assert sum(parts.values()) == pytest.approx(r["kernel_ms"], abs=0.05)
        assert r["median_ms"] > 0 and all(v >= 0 for v in parts.values())
    onnx = {r["graph"]: r for r in records if r["backend"] == "onnx"}
    # the end-to-end graph adds its decoding (top-k, NMS) outside the network's parts; the raw graph has none
    assert {"TopK", "NonMaxSuppression"} <= set(onnx["end2end"]["ops_ms"]), onnx["end2end"]["ops_ms"]
    assert not {"TopK", "NonMaxSuppression"} & set(onnx["raw"]["ops_ms"])
