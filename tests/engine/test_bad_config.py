"""Bad configs and paths are rejected before any work starts, naming the key; the CLIs print one line
``fourm21: XError: ...`` and exit 2, with no traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from fourm21.engine import evaluate, train
from fourm21.engine.common import CONFIG_DIR, friendly_errors
from fourm21.engine.validate_config import check_config
from fourm21.errors import CheckpointError, ConfigError, DatasetError
from tests.conftest import run_cli


def _compose(overrides=(), name="train"):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


BAD = [  # (overrides, error type, words the message must contain: the key and what is wrong)
    (["optim.lr=-1"], ConfigError, "optim.lr: must be > 0, got -1"),
    (["optim.lr=0"], ConfigError, "optim.lr: must be > 0"),
    (["optim.lr=abc"], ConfigError, "optim.lr: must be a number, got 'abc'"),
    (["optim.lr=[1,2]"], ConfigError, "optim.lr: must be a number"),
    (["optim.weight_decay=-0.1"], ConfigError, "optim.weight_decay: must be >= 0"),
    (["optim.warmup_frac=1.5"], ConfigError, "optim.warmup_frac: must be < 1"),
    (["optim.betas=[0.9]"], ConfigError, "optim.betas: must be two numbers"),
    (["data.img_size=50"], ConfigError, "data.img_size: 50 is not a multiple of the largest stride 32; use e.g. 64"),
    (["data.img_size=abc"], ConfigError, "data.img_size: must be an integer, got 'abc'"),
    (["data.img_size=64.5"], ConfigError, "data.img_size: must be an integer"),
    (["data.img_size=0"], ConfigError, "data.img_size: must be >= 1"),
    (["data.datamodule.batch_size=0"], ConfigError, "data.datamodule.batch_size: must be >= 1"),
    (["data.datamodule.batch_size=true"], ConfigError, "data.datamodule.batch_size: must be an integer"),
    (["data.datamodule.num_workers=-1"], ConfigError, "data.datamodule.num_workers: must be >= 0"),
    (["data.on_bad_image=maybe"], ConfigError, "data.on_bad_image: must be one of ['skip', 'error'], got 'maybe'"),
    (["trainer.max_epochs=0"], ConfigError, "trainer.max_epochs: must be >= 1"),
    (["trainer.max_epochs=ten"], ConfigError, "trainer.max_epochs: must be an integer, got 'ten'"),
    (["trainer.check_val_every_n_epoch=0"], ConfigError, "trainer.check_val_every_n_epoch: must be >= 1"),
    (["trainer.gradient_clip_val=-1"], ConfigError, "trainer.gradient_clip_val: must be >= 0"),
    (["seed=abc"], ConfigError, "seed: must be an integer"),
    (["loss.weights.det=-1"], ConfigError, "loss.weights.det: must be >= 0"),
    (["loss.weighting=magic"], ConfigError, "loss.weighting: must be 'fixed' or 'uncertainty'"),
    (["model.heads.det.iou_thr=1.5"], ConfigError, "model.heads.det.iou_thr: must be <= 1"),
    (["model.heads.det.score_thr=-0.1"], ConfigError, "model.heads.det.score_thr: must be >= 0"),
    (["model.heads.det.max_det=0"], ConfigError, "model.heads.det.max_det: must be >= 1"),
    (["model.heads.sem.label_stride=0"], ConfigError, "model.heads.sem.label_stride: must be >= 1"),
    (["model.heads.det.strides=[4,0,16]"], ConfigError, "model.heads.det.strides[1]: must be >= 1"),
    (["experiment=cifar10", "model.heads.det.enabled=true", "data.root=."], ConfigError,
     "model.heads.det.num_classes is 0: data 'cifar10' has no labels for this head; disable it"),
    (["model.heads.attr.enabled=true"], ConfigError,
     "model.heads.attr is enabled but data 'shapes' has no attribute columns (data.groups)"),
    (["model.heads.mlc.enabled=true"], ConfigError, "model.heads.mlc.num_classes is 0: data 'shapes' has no labels"),
    (["experiment=mixed", "data.ratios.cifar10=0", "data.ratios.coco=0"], ConfigError,
     "data.ratios: must not all be 0"),
    (["experiment=coco", "data.root=/no/such/coco"], DatasetError, "data.root: /no/such/coco does not exist"),
    (["experiment=attributes", "data.datamodule.prepare=null", "data.csv=/no/such.csv"], DatasetError,
     "data.csv: /no/such.csv does not exist"),
    (["ckpt_path=/no/such/last.ckpt"], CheckpointError, "checkpoint not found: /no/such/last.ckpt"),
]
if not torch.cuda.is_available():
    BAD.append((["trainer=gpu"], ConfigError, "trainer.accelerator: 'gpu' but no CUDA device is visible"))


@pytest.mark.parametrize("overrides, error, words", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_value_is_rejected_naming_the_key(overrides, error, words):
    cfg = _compose(overrides)
    with pytest.raises(error) as e:
        check_config(cfg)
    assert words in str(e.value)


def test_bad_decode_setting_of_eval_and_predict_is_rejected():
    for name, extra in (("eval", ["ckpt_path=x.ckpt"]), ("predict", ["ckpt_path=x.ckpt", "source=."])):
        with pytest.raises(ConfigError, match="sem_label_stride: must be an integer"):
            check_config(_compose([*extra, "sem_label_stride=2.5"], name))


@pytest.mark.parametrize("overrides", [[], ["experiment=attributes"], ["experiment=multilabel_captions"],
                                       ["experiment=cifar10_fewshot", "data.root=."]], ids=str)
def test_shipped_configs_pass(overrides):
    check_config(_compose(overrides))
    check_config(_compose(["ckpt_path=x.ckpt", *overrides], "eval"))


def test_unknown_key_is_hydras_error_naming_it():
    with pytest.raises(ConfigCompositionException, match="max_epoch"):
        _compose(["trainer.max_epoch=3"])
    with pytest.raises(ConfigCompositionException, match="on_bad_imag"):
        _compose(["data.on_bad_imag=skip"])


def _main(monkeypatch, capsys, module, args, tmp_path) -> str:
    """Run an entry point in-process as the console script would; returns its stderr."""
    monkeypatch.setattr(sys, "argv", [module.__name__, *args, f"hydra.run.dir={tmp_path / 'run'}"])
    with pytest.raises(SystemExit) as e:
        module.main()
    assert e.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("module, args, line", [
    (evaluate, [], "fourm21: ConfigError: ckpt_path: required, give it on the command line (ckpt_path=...)"),
    (evaluate, ["ckpt_path=/no/such.ckpt"], "fourm21: CheckpointError: checkpoint not found: /no/such.ckpt"),
    (train, ["optim.lr=abc"], "fourm21: ConfigError: optim.lr: must be a number, got 'abc'"),
    (train, ["experiment=coco", "data.root=/no/coco"], "fourm21: DatasetError: data.root: /no/coco does not exist"),
], ids=["eval_no_ckpt", "eval_missing_ckpt", "train_bad_lr", "train_missing_root"])
def test_entry_points_print_one_line(monkeypatch, capsys, tmp_path, module, args, line):
    assert _main(monkeypatch, capsys, module, args, tmp_path).strip().splitlines() == [line]


def test_errors_wrapped_by_hydra_instantiate_are_unwrapped(capsys):
    from hydra.utils import instantiate

    @friendly_errors
    def build():
        instantiate({"_target_": "fourm21.data.coco.CocoDataset", "img_dir": ".", "ann_file": "/no/ann.json"})
    with pytest.raises(SystemExit):
        build()
    assert capsys.readouterr().err == "fourm21: DatasetError: annotation file not found: /no/ann.json\n"

    @friendly_errors
    def bug():
        raise KeyError("a bug, not a user error")
    with pytest.raises(KeyError):  # anything else keeps its traceback
        bug()


def test_console_script_exit_code_and_one_line(tmp_path):
    """The real console script, once: exit code 2, one line on stderr, no traceback."""
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(b"PK\x03\x04" + b"\0" * 200)
    res = run_cli("fourm21-eval", [f"ckpt_path={cut}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fourm21: CheckpointError: checkpoint {cut} is cut short")
    assert "Traceback" not in res.stderr


def test_optimiser_settings_come_from_the_config_and_a_missing_one_is_named():
    from fourm21.training.module import MultiTaskModule
    from tests.conftest import model_config

    optim = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "optim" / "adamw.yaml"), resolve=True)
    assert set(optim) >= {"lr", "weight_decay", "betas", "warmup_frac", "warmup_steps", "min_lr_ratio",
                          "optimizer", "scheduler"}
    optim.pop("weight_decay")
    module = MultiTaskModule(model=model_config(), loss={"weights": {"cls": 1.0, "det": 1.0, "inst": 1.0,
                                                                      "sem": 1.0}}, optim=optim)
    with pytest.raises(ConfigError, match=r"^optim.weight_decay is missing"):
        module.configure_optimizers()


def test_callback_settings_out_of_range_are_config_errors():
    from fourm21.training.callbacks import LastSnapshot, NonFiniteGuard

    with pytest.raises(ConfigError, match="callbacks.nonfinite.max_in_row"):
        NonFiniteGuard(max_in_row=0)
    with pytest.raises(ConfigError, match="callbacks.snapshot.every_n_train_steps"):
        LastSnapshot("x", every_n_train_steps=0)
