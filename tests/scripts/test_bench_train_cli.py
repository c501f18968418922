"""scripts/bench_train_cli.py: the commands of fourm21-train and each ultralytics peer's trainer (--dry-run, no
ultralytics needed), and the summary's ratios."""

import json
import os
import subprocess
import sys

from tests.conftest import REPO
from tests.scripts.bench_helpers import load_script

SCRIPT = REPO / "scripts" / "bench_train_cli.py"
PEERS = ("yolo26n-seg", "yolo11n-seg", "yolov8n-seg")


def dry_run(*args: str) -> list[dict]:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    res = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", *args], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    return [json.loads(line) for line in res.stdout.splitlines()]


def test_every_peer_trains_from_its_own_yaml():
    lines = dry_run("--tools", "fourm21", *PEERS, "--epochs", "2", "--size", "64")
    cmds = {r["tool"]: r["command"] for r in lines}
    assert list(cmds) == ["fourm21", *PEERS]
    assert "model=lite" in cmds["fourm21"] and "trainer.max_epochs=2" in cmds["fourm21"]
    for peer in PEERS:
        assert cmds[peer][2] == "<child code>" and cmds[peer][3] == f"{peer}.yaml"
        assert cmds[peer][5:8] == ["2", "64", "16"] and cmds[peer][9] == peer  # epochs, size, batch; run name


def test_default_tools_and_the_old_yolo_name():
    assert [r["tool"] for r in dry_run()] == ["fourm21", "yolo26n-seg"]
    assert [r["tool"] for r in dry_run("--tools", "yolo", "fourm21", "yolov8n-seg")] == ["fourm21", "yolov8n-seg"]


def test_summary_ratios_per_peer():
    cli = load_script("bench_train_cli")
    results = {"fourm21": {"wall_s": 50.0, "fit_s": 40.0}, "yolo26n-seg": {"wall_s": 75.0, "fit_s": 60.0},
               "yolov8n-seg": {"wall_s": 60.0, "fit_s": None}}
    s = cli.summary(results, epochs=2)
    assert s["yolo26n-seg_over_fourm21_wall"] == 1.5 and s["yolo26n-seg_over_fourm21_fit"] == 1.5
    assert s["yolov8n-seg_over_fourm21_wall"] == 1.2 and s["yolov8n-seg_over_fourm21_fit"] is None
    assert s["fourm21_epoch_s_mean"] == 20.0 and s["yolo26n-seg_epoch_s_mean"] == 30.0
    assert s["yolov8n-seg_epoch_s_mean"] is None and "yolo11n-seg_over_fourm21_wall" not in s
