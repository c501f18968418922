"""fourm21-train's heads follow the data: a head whose labels the data lacks is switched off with one printed
line, unless the command line enabled it (then check_config's one-line ConfigError, exit 2)."""

from __future__ import annotations

import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fourm21.engine import train
from fourm21.engine.common import CONFIG_DIR
from fourm21.engine.validate_config import check_config, heads_follow_data
from fourm21.errors import ConfigError
from tests.conftest import TINY, run_cli
from tests.data.test_data_formats_train import coco128_seg_like
from tests.data.test_image_folder import tree

NET = [a for a in TINY if not a.startswith("data.")] + ["data.datamodule.num_workers=0"]
FIT = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "evaluate=false",
       "plots=false"]
NO_BOXES = "data 'image_folder' has no labels for it (data.num_classes is 0)"


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def _enabled(cfg) -> list[str]:
    return [name for name, h in cfg.model.heads.items() if h.enabled]


def _line(name: str, why: str) -> str:
    return f"fourm21: head '{name}' switched off: {why}"


def test_heads_without_labels_are_switched_off():
    cfg = _compose(["data=imagefolder", "data.root=."])
    off = heads_follow_data(cfg)
    # inst has no size of its own: it goes because it reads det
    assert off == {"det": NO_BOXES, "inst": "it needs head 'det', which is off", "sem": NO_BOXES}
    assert _enabled(cfg) == ["cls"]
    check_config(cfg)  # what stopped the run before passes now
    cfg = _compose(["data=yolo", "data.root=.", "data.num_image_classes=0"])  # as the data fills it without a CSV
    assert heads_follow_data(cfg) == {"cls": "data 'yolo' has no labels for it (data.num_image_classes is 0)"}
    assert _enabled(cfg) == ["det", "inst", "sem"]
    cfg = _compose([])  # shapes labels every default head
    assert heads_follow_data(cfg) == {} and _enabled(cfg) == ["cls", "det", "inst", "sem"]


def test_a_zero_size_on_labelled_data_is_still_an_error():
    """Only the data's 0 switches a head off; a head size set to 0 on data that has the labels is the user's slip."""
    cfg = _compose(["model.heads.det.num_classes=0"])
    assert heads_follow_data(cfg) == {}
    with pytest.raises(ConfigError, match="model.heads.det.num_classes is 0"):
        check_config(cfg)


def test_an_explicit_head_stays_on_for_check_config_to_reject():
    cfg = _compose(["data=imagefolder", "data.root=."])
    assert heads_follow_data(cfg, {"det"}) == {"sem": NO_BOXES}  # inst reads det, which is on
    with pytest.raises(ConfigError, match=r"model.heads.det.num_classes is 0: data 'image_folder' has no labels for "
                                          r"this head; disable it \(model.heads.det.enabled=false\)"):
        check_config(cfg)
    cfg = _compose(["data=imagefolder", "data.root=."])
    heads_follow_data(cfg, {"inst"})
    assert _enabled(cfg) == ["cls", "inst"]
    with pytest.raises(ConfigError, match="model.heads.inst needs a 'det' head, which is disabled"):
        check_config(cfg)


def test_no_head_left_is_one_error():
    cfg = _compose(["data=imagefolder", "data.root=.", "model.heads.cls.enabled=false"])
    with pytest.raises(ConfigError, match=r"model.heads: no head is left on: data 'image_folder' has labels for none "
                                          r"of the enabled heads \(det, inst, sem\); enable a head this data labels"):
        heads_follow_data(cfg)
    cfg = _compose([f"model.heads.{h}.enabled=false" for h in ("cls", "det", "inst", "sem")])
    with pytest.raises(ConfigError, match="model.heads: every head is disabled"):
        heads_follow_data(cfg)


def test_only_the_heads_left_on_count_for_the_stride_check():
    overrides = ["data=imagefolder", "data.root=.", "data.img_size=32", "model.heads.det.strides=[8,16,64]"]
    with pytest.raises(ConfigError, match="not a multiple of the largest stride 64"):
        check_config(_compose(overrides))
    cfg = _compose(overrides)
    heads_follow_data(cfg)
    check_config(cfg)


def test_command_line_enabled_head_without_labels_exits_2(monkeypatch, capsys, tmp_path):
    root = tree(tmp_path / "tree", per_class=1, val=False)
    monkeypatch.setattr(sys, "argv", ["fourm21-train", "data=imagefolder", f"data.root={root}",
                                      "model.heads.det.enabled=true", f"hydra.run.dir={tmp_path / 'run'}"])
    with pytest.raises(SystemExit) as e:
        train.main()
    assert e.value.code == 2
    out = capsys.readouterr()
    assert out.err.strip().splitlines() == [
        "fourm21: ConfigError: model.heads.det.num_classes is 0: data 'image_folder' has no labels for this head; "
        "disable it (model.heads.det.enabled=false) or pick an experiment made for this data "
        "(e.g. experiment=image_folder)"]
    assert _line("sem", NO_BOXES) in out.out and "head 'det'" not in out.out and "head 'inst'" not in out.out


def test_imagefolder_trains_with_no_head_argument(tmp_path):
    root = tree(tmp_path / "tree", per_class=2)
    res = run_cli("fourm21-train", ["data=imagefolder", f"data.root={root}", "data.img_size=32",
                                    "data.datamodule.batch_size=3", *NET, *FIT, f"hydra.run.dir={tmp_path / 'run'}"],
                  tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    for name, why in (("det", NO_BOXES), ("inst", "it needs head 'det', which is off"), ("sem", NO_BOXES)):
        assert _line(name, why) in res.stdout
    assert "head 'cls'" not in res.stdout
    cfg = OmegaConf.load(tmp_path / "run" / "config.yaml")
    assert _enabled(cfg) == ["cls"] and cfg.model.heads.cls.num_classes == 3
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_yolo_trains_with_no_head_argument(tmp_path):
    src = coco128_seg_like(tmp_path / "datasets", n=4)
    # loss=uncertainty: the loss weights still name cls, which is off
    res = run_cli("fourm21-train", ["data=yolo", f"data.root={src}", "data.img_size=64", "data.aug.mosaic=0",
                                    "data.datamodule.batch_size=2", "loss=uncertainty", *NET, *FIT,
                                    f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}"],
                  tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert _line("cls", "data 'yolo' has no labels for it (data.num_image_classes is 0)") in res.stdout
    assert res.stdout.count("switched off") == 1
    cfg = OmegaConf.load(tmp_path / "run" / "config.yaml")
    assert _enabled(cfg) == ["det", "inst", "sem"] and cfg.model.heads.det.num_classes == 3
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
