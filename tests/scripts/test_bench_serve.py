"""scripts/bench_serve.py against the session's tiny checkpoint: short levels, a tiny queue so 429s appear, and
well-formed JSON lines whose counts agree with each other."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "bench_serve.py"


def test_bench_serve_lines(tiny_run):
    work, run_dir, _ = tiny_run
    images = work / "data" / "shapes" / "images" / "val"
    cmd = [sys.executable, str(SCRIPT), "--model", str(run_dir / "checkpoints" / "best.ckpt"), "--images", str(images),
           "--clients", "1", "8", "--duration", "1.5", "--memory-requests", "20", "--memory-warmup", "5",
           "--memory-every", "5", "--num-threads", "1",
           "--serve-args", "max_queue=2", "max_batch_size=8", "batch_timeout_s=0.2"]
    res = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    lines = [json.loads(line) for line in res.stdout.splitlines()]  # every stdout line is JSON
    setup, one, eight, memory, summary = lines
    assert setup["setup"]["format"] == "checkpoint" and setup["setup"]["limits"]["max_queue"] == 2
    assert setup["setup"]["images"] == 8 and "host=127.0.0.1" in setup["setup"]["serve_args"]
    for level, clients in ((one, 1), (eight, 8)):
        assert level["clients"] == clients and level["ok"] > 0 and level["unanswered"] == 0
        assert level["requests"] == sum(level["status"].values())
        assert level["ok"] == level["status"]["200"]
        # every answered image ran in one of the batches the service reports for the level
        assert sum(int(k) * v for k, v in level["batch_sizes"].items()) == level["ok"]
        p = level["latency_ms"]
        assert 0 < p["p50"] <= p["p95"] <= p["p99"] <= p["max"]
        assert level["throughput_rps"] > 0 and level["rss_mb_start"] > 50 and level["rss_mb_end"] > 50
    assert set(one["status"]) == {"200"}
    assert eight["status"].get("429", 0) > 0 and max(map(int, eight["batch_sizes"])) <= 2  # the tiny queue
    assert memory["memory"]["status"] == {"200": 20} and len(memory["memory"]["rss_mb"]) == 4
    assert summary["summary"] == {"unanswered": 0, "other_5xx": 0, "service_exit_code": 0, "ok": True}
