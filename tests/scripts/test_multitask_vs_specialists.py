"""scripts/multitask_vs_specialists.py on a pets-layout folder written by the tests: a specialist run gives its
JSON line and table row, and the bench times every network and the joint-over-sum ratios from those times."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.engine.test_pets_experiment import pets_like

SCRIPT = REPO / "scripts" / "multitask_vs_specialists.py"
TINY = ["data.img_size=64", "data.datamodule.batch_size=3", "data.datamodule.num_workers=0",
        "trainer.precision=32-true"]


def run(tmp_path, *args: str) -> list[str]:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    res = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout.splitlines()


@pytest.fixture(scope="module")
def pets(tmp_path_factory):
    return pets_like(tmp_path_factory.mktemp("mvs") / "pets")


def test_a_specialist_run_reports_its_tasks_only(pets, tmp_path):
    lines = run(tmp_path, "train", "--root", str(pets), "--epochs", "1", "--only", "semantic",
                "--out", str(tmp_path / "runs"), "--extra", *TINY, "plots=false")
    row = json.loads(lines[0])
    assert row["run"] == "semantic" and row["heads"] == ["sem"] and row["epochs"] == 1
    assert 0 <= row["val/sem/miou"] <= 1 and "val/det/map50" not in row and row["train_s"] > 0
    config = (tmp_path / "runs" / "semantic" / "config.yaml").read_text()
    assert "num_threads: 1" in config
    assert any(line.startswith("| semantic | — | — | — | — | ") for line in lines)


def test_bench_times_every_network_and_the_ratios(pets, tmp_path):
    lines = [json.loads(x) for x in run(tmp_path, "bench", "--root", str(pets), "--iters", "1", "--warmup", "0",
                                        "--extra", *TINY[:3])]
    times = {(r["run"], r["stage"]): r["median_ms"] for r in lines if "run" in r}
    assert set(times) == {(n, s) for n in ("joint", "det+inst", "image labels", "semantic")
                          for s in ("train_step", "latency")}
    assert all(t > 0 for t in times.values()) and all(r["cpu"] and r["batch"] == 3 for r in lines)
    for summary in (r for r in lines if "joint_over_sum" in r):
        stage = summary["stage"]
        total = sum(times[(n, stage)] for n in ("det+inst", "image labels", "semantic"))
        assert summary["specialists_sum_ms"] == pytest.approx(total, abs=0.2)
        assert summary["joint_over_sum"] == pytest.approx(times[("joint", stage)] / total, abs=0.01)
