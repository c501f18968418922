"""The console scripts, run as a user runs them (subprocess, Hydra overrides)."""

import json

import pytest

from tests.conftest import TINY, assert_trained, run_cli_here
from tests.conftest import run_cli as _run


@pytest.fixture(scope="module")
def trained_run(tiny_run):
    return tiny_run


def test_train_writes_the_run_directory(trained_run):
    _, run_dir, res = trained_run
    for name in ("report.json", "report.md", "config.yaml", "checkpoints/last.ckpt", "checkpoints/best.ckpt",
                 "logs/metrics.csv", "loss_curves.png", "confusion_matrix.png", "val_predictions.png"):
        assert (run_dir / name).is_file(), name
    report = json.loads((run_dir / "report.json").read_text())
    for key in ("val/cls/acc", "val/cls/f1_macro", "val/det/map", "val/det/map50", "val/inst/map", "val/inst/map50",
                "val/sem/miou", "val/sem/dice", "val/sem/pixel_acc", "train/loss", "time/train_s"):
        assert key in report, key
        assert 0 <= report[key] < float("inf")
    assert "val/sem/miou" in res.stdout
    assert_trained(run_dir)  # the values are a trained model's (the learning floors are in test_learning.py)


def test_eval_reproduces_the_training_report(trained_run):
    tmp, run_dir, _ = trained_run
    out = tmp / "eval"
    res = run_cli_here("fourm21-eval", [f"ckpt_path={run_dir / 'checkpoints/best.ckpt'}", *TINY[:3],
                                "trainer.precision=32-true",  # as the run trained (auto may pick bf16 here)
                                f"paths.data_dir={tmp / 'data'}", f"hydra.run.dir={out}"], tmp)
    assert res.returncode == 0, res.stderr[-3000:]
    a = json.loads((run_dir / "report.json").read_text())
    b = json.loads((out / "report.json").read_text())
    for key in ("val/cls/acc", "val/det/map", "val/inst/map50", "val/sem/miou"):
        assert b[key] == pytest.approx(a[key], abs=1e-6), key


def test_fast_dev_run_with_overrides_and_vit(tmp_path):
    res = _run("fourm21-train", ["data.generate.num_train=8", "data.generate.num_val=4", "data.datamodule.batch_size=4",
                                 "model/backbone=vit_tiny", "+model.backbone.embed_dim=48", "+model.backbone.depth=2",
                                 "+model.backbone.num_heads=2", "model.neck.channels=32",
                                 "model.heads.det.strides=[4,8,16]", "trainer.fast_dev_run=true",
                                 f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "run" / "report.json").is_file()


def test_typo_in_override_is_a_clear_hydra_error(tmp_path):
    res = run_cli_here("fourm21-train", ["trainer.max_epoch=3", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert res.returncode != 0
    assert "max_epoch" in res.stderr and "Traceback" not in res.stderr


def test_user_errors_print_one_line(tmp_path):
    missing = tmp_path / "missing.ckpt"
    res = _run("fourm21-eval", [f"ckpt_path={missing}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert res.returncode == 2
    assert "CheckpointError" in res.stderr and "missing.ckpt" in res.stderr and "Traceback" not in res.stderr
    res = run_cli_here("fourm21-train", ["optim.lr=-1", f"hydra.run.dir={tmp_path / 'run2'}"], tmp_path)
    assert res.returncode == 2 and "optim.lr" in res.stderr and "Traceback" not in res.stderr


def test_mixed_precision_switch(tmp_path):
    res = _run("fourm21-train", [*TINY, "trainer.precision=bf16-mixed", "trainer.fast_dev_run=true",
                                 f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert all(v == v for v in report.values())  # no NaN under bf16 autocast
