"""``fourm21.engine.train``: fit's end-of-run validation is left to the report's evaluation when it would repeat it."""

import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import EarlyStopping

from fourm21.engine.common import CONFIG_DIR
from fourm21.engine.train import report_validates
from tests.conftest import TINY, run_cli, val_losses


def _cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def test_the_default_run_leaves_its_one_validation_to_the_report():
    assert report_validates(_cfg(), [])
    assert report_validates(_cfg("trainer.max_epochs=3"), [])  # check_val_every_n_epoch follows max_epochs


@pytest.mark.parametrize("overrides", [
    ["trainer.check_val_every_n_epoch=1"],           # validated every epoch: best.ckpt is chosen among them
    ["evaluate=false"],                             # no report: fit's validation is the only one
    ["trainer.fast_dev_run=true"],
    ["+trainer.max_steps=5"],                       # may stop before the last epoch's validation
    ["model.heads.mlc.enabled=true"],               # the multi-label head tunes its thresholds in it
], ids=["every-epoch", "no-evaluate", "fast-dev-run", "max-steps", "multilabel-tuning"])
def test_runs_whose_fit_validation_is_needed_keep_it(overrides):
    assert not report_validates(_cfg(*overrides), [])


def test_a_callback_reading_val_metrics_keeps_the_validation():
    assert not report_validates(_cfg(), [EarlyStopping(monitor="val/score", mode="max")])


def test_a_multilabel_head_that_does_not_tune_leaves_it_too():
    assert report_validates(_cfg("model.heads.mlc.enabled=true", "model.heads.mlc.tune=none"), [])


def test_a_run_without_fit_validation_writes_best_ckpt_and_reports_its_weights(tmp_path):
    run = tmp_path / "run"
    res = run_cli("fourm21-train", [*TINY, f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={run}",
                                    "trainer.max_epochs=2"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert val_losses(run) == []  # no validation inside fit
    best, last = (torch.load(run / "checkpoints" / f, map_location="cpu", weights_only=False)
                  for f in ("best.ckpt", "last.ckpt"))
    assert best["global_step"] == last["global_step"] > 0
    assert all(torch.equal(best["state_dict"][k], v) for k, v in last["state_dict"].items())  # the final weights
    report = json.loads((run / "report.json").read_text())
    assert 0 <= report["val/score"] <= 1 and report["time/train_s"] > 0
    assert "best.ckpt" in (run / "report.md").read_text()  # the report evaluated that file
