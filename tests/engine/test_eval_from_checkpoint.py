"""fourm21-eval ckpt_path=X alone evaluates on the data config the checkpoint was trained with; the command line
overrides only the data keys it names, and a data group or experiment it picks is evaluated as composed."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from fourm21.engine.evaluate import use_checkpoint_data
from fourm21.errors import ConfigError
from fourm21.inference.checkpoints import DATA_CONFIG, load_checkpoint, read_checkpoint, stored_data_config
from tests.conftest import TINY, run_cli, run_cli_here
from tests.data.test_image_folder import tree

NET = [a for a in TINY if not a.startswith("data.")]  # the shapes generator's keys left out
# two classes, 32 px: eval.yaml's default data (shapes, 4 scene classes, 64 px) cannot evaluate this checkpoint
DATA = ["data.img_size=32", "data.datamodule.batch_size=4", "data.datamodule.num_workers=0"]
SAME = ["trainer.precision=32-true", "plots=false"]  # fp32 as trained (auto may pick bf16 on this CPU)


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """One epoch on a two-class image-folder tree at 32 px; (work dir, its last.ckpt, its report)."""
    tmp = tmp_path_factory.mktemp("eval_from_ckpt")
    root = tree(tmp / "tree", classes=("cat", "dog"), per_class=3)
    run_dir = tmp / "run"
    res = run_cli("fourm21-train", ["experiment=image_folder", f"data.root={root}", *DATA, *NET, *SAME,
                                    "trainer.max_epochs=1", f"hydra.run.dir={run_dir}"], tmp)
    assert res.returncode == 0, res.stderr[-3000:]
    return tmp, run_dir / "checkpoints" / "last.ckpt", json.loads((run_dir / "report.json").read_text())


def _eval(tmp, ckpt, name: str, *args: str, here: bool = False):
    run = run_cli_here if here else run_cli  # here: in this process, for the runs that stop at an error
    res = run("fourm21-eval", [f"ckpt_path={ckpt}", *args, f"hydra.run.dir={tmp / name}"], tmp)
    report = json.loads((tmp / name / "report.json").read_text()) if res.returncode == 0 else None
    return res, report


def test_the_checkpoint_stores_its_data_config_unresolved_and_inference_meta_leaves_it_out(folder_run):
    _, ckpt, _ = folder_run
    stored = stored_data_config(ckpt)
    assert stored["name"] == "image_folder" and stored["img_size"] == 32 and stored["num_image_classes"] == 2
    assert stored["datamodule"]["val"]["root"] == "${data.root}"  # follows a data.root= override
    assert read_checkpoint(ckpt)["hyper_parameters"]["meta"][DATA_CONFIG] == stored
    assert DATA_CONFIG not in load_checkpoint(ckpt)[1]["meta"]  # what exports, the hub and the service read


def test_eval_with_only_the_checkpoint_uses_its_data(folder_run):
    tmp, ckpt, trained = folder_run
    res, report = _eval(tmp, ckpt, "plain", *SAME)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "data 'image_folder' as the checkpoint was trained" in res.stdout
    assert "val/cls/acc" in report and not any(k.startswith("val/det") for k in report)
    # the same weights on the same images at the same size: the training report's numbers
    for key in ("val/cls/acc", "val/cls/loss"):
        assert report[key] == pytest.approx(trained[key], abs=1e-6), key


def test_a_data_override_on_the_command_line_is_honoured(folder_run):
    tmp, ckpt, trained = folder_run
    res, report = _eval(tmp, ckpt, "bigger", *SAME, "data.img_size=48")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "with data.img_size=48" in res.stdout
    assert report["val/cls/loss"] != pytest.approx(trained["val/cls/loss"], abs=1e-6)  # other pixels went in


def test_picking_data_with_another_class_count_is_still_one_line(folder_run):
    tmp, ckpt, _ = folder_run
    res, _ = _eval(tmp, ckpt, "shapes", "data=shapes", here=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "CheckpointError" in res.stderr and "2 classes in its 'cls' head but data 'shapes' has 4" in res.stderr


STORED = {"name": "shapes", "root": "${paths.data_dir}/shapes", "img_size": 96, "num_classes": 3,
          "datamodule": {"batch_size": 8, "val": {"img_dir": "${data.root}/images"}}}


def _composed():
    """What eval.yaml composes (shapes at 64 px), struct like Hydra's."""
    cfg = OmegaConf.create({"paths": {"data_dir": "/data"}, "ckpt_path": "x.ckpt",
                            "data": {"name": "shapes", "root": "${paths.data_dir}/shapes", "img_size": 64,
                                     "num_classes": 3, "datamodule": {"batch_size": 32, "val": {"img_dir": "x"}}}})
    OmegaConf.set_struct(cfg, True)
    return cfg


def test_stored_data_with_the_command_lines_data_keys_on_top():
    cfg = _composed()
    applied = use_checkpoint_data(cfg, STORED, ["ckpt_path=x.ckpt", "data.root=/elsewhere", "stage=test",
                                                "+data.datamodule.val_batch_size=3", "~data.num_classes"])
    assert applied == ["data.root=/elsewhere", "+data.datamodule.val_batch_size=3", "~data.num_classes"]
    assert cfg.data.img_size == 96 and cfg.data.datamodule.batch_size == 8  # the checkpoint's, not eval.yaml's
    assert cfg.data.datamodule.val.img_dir == "/elsewhere/images"  # the interpolation follows data.root
    assert cfg.data.datamodule.val_batch_size == 3 and "num_classes" not in cfg.data
    cfg = _composed()
    use_checkpoint_data(cfg, STORED, [])
    assert cfg.data.datamodule.val.img_dir == "/data/shapes/images"  # ${paths.*}: this run's paths


@pytest.mark.parametrize("overrides", [["data=coco"], ["experiment=shapes_pose"], ["+experiment=x", "data.root=/y"]])
def test_a_data_group_or_experiment_on_the_command_line_keeps_the_composed_data(overrides):
    cfg = _composed()
    assert use_checkpoint_data(cfg, STORED, overrides) is None
    assert cfg.data.img_size == 64


def test_a_checkpoint_without_a_stored_data_config_keeps_the_composed_data():
    cfg = _composed()
    assert use_checkpoint_data(cfg, None, ["data.img_size=32"]) is None and cfg.data.img_size == 64


def test_a_key_the_stored_data_lacks_is_one_line():
    with pytest.raises(ConfigError, match=r"data.generate.num_val=8: the data config stored in the checkpoint "
                                          r"\('shapes'\) has no key data.generate.num_val"):
        use_checkpoint_data(_composed(), STORED, ["data.generate.num_val=8"])
