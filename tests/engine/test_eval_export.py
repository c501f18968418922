"""fourm21-eval ckpt_path=<export dir>: an export (ONNX raw or end-to-end; f32 or int8) is scored by the evaluator
checkpoints are scored by, on the data its checkpoint was trained with (``data_from``, by default the checkpoint its
export_report.json names); an f32 export gives the checkpoint's figures."""

from __future__ import annotations

import shutil

import pytest
from hydra import compose, initialize_config_dir

from fourm21.engine.common import CONFIG_DIR
from fourm21.engine.evaluate import run_eval
from fourm21.engine.export import run_export
from fourm21.errors import CheckpointError
from fourm21.training.exported import export_directory, export_source
from tests.conftest import run_cli_here

SCORES = ("val/cls/acc", "val/det/map", "val/det/map50", "val/inst/map", "val/inst/map50", "val/sem/miou")


def _compose(config: str, tiny_run, *overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config, [f"paths.data_dir={tiny_run[0] / 'data'}", *overrides])


@pytest.fixture(scope="module")
def scored(tiny_run, tmp_path_factory):
    """The checkpoint's and two f32 ONNX exports' (raw outputs, end to end) fourm21-eval metrics."""
    tmp = tmp_path_factory.mktemp("eval_export")
    ckpt = tiny_run[1] / "checkpoints/best.ckpt"
    for name, extra in (("raw", []), ("e2e", ["end2end=true"])):
        run_export(_compose("export", tiny_run, f"ckpt_path={ckpt}", "format=onnx", *extra,
                            f"paths.run_dir={tmp / name}"))
    same = ["trainer.precision=32-true", "plots=false"]  # the checkpoint in fp32 (auto may pick bf16 on this CPU)
    models = (("ckpt", ckpt), ("raw", tmp / "raw/export"), ("e2e", tmp / "e2e/export/model.onnx"))
    return {name: run_eval(_compose("eval", tiny_run, f"ckpt_path={path}", *same, f"paths.run_dir={tmp / name}_eval"))
            for name, path in models}, tmp


def test_an_f32_export_scores_as_its_checkpoint(scored):
    metrics, tmp = scored
    assert metrics["ckpt"]["val/det/map50"] > 0  # something to agree about
    for name in ("raw", "e2e"):
        for key in SCORES:
            assert metrics[name][key] == pytest.approx(metrics["ckpt"][key], abs=1e-3), (name, key)
        assert not any("loss" in k for k in metrics[name])  # an export has no raw outputs for every loss
    assert (tmp / "raw_eval/report.json").is_file() and (tmp / "raw_eval/predictions/bbox.json").is_file()


def test_a_moved_export_is_scored_on_the_data_of_the_checkpoint_data_from_names(scored, tiny_run):
    metrics, tmp = scored
    shutil.copytree(tmp / "raw/export", tmp / "moved/export")  # no export_report.json beside it now
    assert export_source(tmp / "moved/export") is None and export_source(tmp / "raw/export") is not None
    ckpt = tiny_run[1] / "checkpoints/best.ckpt"
    moved = run_eval(_compose("eval", tiny_run, f"ckpt_path={tmp / 'moved/export'}", f"data_from={ckpt}",
                              "plots=false", f"paths.run_dir={tmp / 'moved_eval'}"))
    for key in SCORES:
        assert moved[key] == pytest.approx(metrics["raw"][key], abs=1e-6), key


def test_export_directory_is_the_directory_or_its_model_file(scored, tiny_run):
    _, tmp = scored
    assert export_directory(tmp / "raw/export") == tmp / "raw/export"
    assert export_directory(tmp / "raw/export/model.onnx") == tmp / "raw/export"
    assert export_directory(tiny_run[1] / "checkpoints/best.ckpt") is None


def test_a_folder_that_is_no_export_is_one_line(tiny_run, tmp_path):
    (tmp_path / "empty").mkdir()
    res = run_cli_here("fourm21-eval", [f"ckpt_path={tmp_path / 'empty'}", f"hydra.run.dir={tmp_path / 'run'}"],
                       tmp_path)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr[-2000:]
    assert lines[0].startswith(f"fourm21: {CheckpointError.__name__}:") and "config.yaml" in lines[0]
