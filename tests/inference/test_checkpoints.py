"""Checkpoints that cannot be used: missing, empty, cut short, foreign, or of another architecture.

Each is a CheckpointError naming the file, and for another architecture what differs."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest
import torch

from fourm21.errors import CheckpointError
from fourm21.inference.checkpoints import check_data_matches, check_resume, load_checkpoint, read_checkpoint
from fourm21.training.evaluation import load_module
from fourm21.training.module import MultiTaskModule
from tests.conftest import TINY_VIT, model_config

LOSS = {"weighting": "fixed", "weights": {"cls": 1.0, "det": 1.0, "inst": 1.0, "sem": 1.0}}
OPTIM = {"lr": 1e-3}


def _ckpt(model: dict, state_from: dict | None = None) -> dict:
    """A checkpoint as Lightning writes it (the keys fourm21 reads), for ``model``; the weights of
    ``state_from`` when given (another architecture)."""
    module = MultiTaskModule(model=model, loss=LOSS, optim=OPTIM, meta={"img_size": 64})
    state = module.state_dict() if state_from is None else \
        MultiTaskModule(model=state_from, loss=LOSS, optim=OPTIM).state_dict()
    return {"epoch": 1, "global_step": 10, "state_dict": state, "hyper_parameters": dict(module.hparams)}


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "good.ckpt"
    torch.save(_ckpt(model_config()), path)
    return path


def test_a_good_checkpoint_loads_everywhere(good):
    net, hp = load_checkpoint(good)
    assert not net.training and set(net.heads) == {"cls", "det", "inst", "sem"} and hp["meta"]["img_size"] == 64
    module = load_module(good)
    saved = torch.load(good, weights_only=True)["state_dict"]
    assert all(torch.equal(v, saved[k]) for k, v in module.state_dict().items())
    check_resume(good, model_config(), LOSS)  # same model: resuming is fine


def _write(path, content):
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)


def _cut(fraction):
    def make(good_bytes):
        return good_bytes[: int(len(good_bytes) * fraction)]
    return make


UNREADABLE = [
    ("empty", lambda b: b"", "is empty"),
    ("cut_half", _cut(0.5), "is cut short"),
    ("cut_to_a_header", lambda b: b[:100], "is cut short"),
    ("cut_last_byte", lambda b: b[:-1], "is cut short"),
    ("text", lambda b: b"not a checkpoint at all\n", "cannot read checkpoint"),
    ("raw_pickle", lambda b: pickle.dumps({"a": 1}), "cannot read checkpoint"),
    ("foreign_objects", lambda b: {"state_dict": {}, "where": Path("x")}, "cannot read checkpoint"),
    ("plain_tensor", lambda b: torch.zeros(3), "not a fourm21 training checkpoint"),
    ("no_model_config", lambda b: {"state_dict": {}, "hyper_parameters": {"lr": 1}}, "not a fourm21"),
    ("no_state_dict", lambda b: {"hyper_parameters": {"model": {}}}, "not a fourm21"),
]


@pytest.mark.parametrize("name, make, words", UNREADABLE, ids=[u[0] for u in UNREADABLE])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_unreadable_checkpoint_names_the_file(good, tmp_path, name, make, words):
    path = tmp_path / f"{name}.ckpt"
    _write(path, make(good.read_bytes()))
    for load in (read_checkpoint, load_checkpoint, load_module):
        with pytest.raises(CheckpointError, match=words) as e:
            load(path)
        assert str(path) in str(e.value)


def test_missing_and_folder(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found: .*nope.ckpt"):
        load_module(tmp_path / "nope.ckpt")
    with pytest.raises(CheckpointError, match="is not a file"):
        read_checkpoint(tmp_path)


def _without_sem(cfg: dict) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg["heads"]["sem"]["enabled"] = False
    return cfg


def _more_classes(cfg: dict) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg["heads"]["det"]["num_classes"] = 5
    return cfg


MISMATCHED = [  # (name, config saved in the file, weights saved in the file, words of the message)
    ("other_backbone", model_config(), model_config(TINY_VIT), ["missing", "unexpected", "model.backbone.body"]),
    ("head_missing", model_config(), _without_sem(model_config()), ["missing", "model.heads.sem"]),
    ("extra_head", _without_sem(model_config()), model_config(), ["unexpected", "model.heads.sem"]),
    ("other_class_count", model_config(), _more_classes(model_config()), ["another shape", "model.heads.det"]),
]


@pytest.mark.parametrize("name, config, weights, words", MISMATCHED, ids=[m[0] for m in MISMATCHED])
def test_weights_of_another_architecture_name_what_differs(tmp_path, name, config, weights, words):
    path = tmp_path / f"{name}.ckpt"
    torch.save(_ckpt(config, weights), path)
    with pytest.raises(CheckpointError, match="does not match the model built from its config") as e:
        load_module(path)
    for w in [str(path), "backbone convnext_atto", *words]:
        assert w in str(e.value), (w, str(e.value))
    with pytest.raises(CheckpointError, match="heads cls\\+det\\+inst"):
        load_checkpoint(path)  # the API and predict path: same check, without the Lightning prefix


def test_unbuildable_config_is_named(tmp_path):
    cfg = model_config()
    cfg["backbone"]["name"] = "no_such_net"
    path = tmp_path / "future.ckpt"
    ckpt = _ckpt(model_config())
    ckpt["hyper_parameters"]["model"] = cfg
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="future.ckpt: its model config cannot be built"):
        load_checkpoint(path)


@pytest.mark.parametrize("change, words", [
    (lambda c: c["backbone"].update(name="vit_tiny_patch16_224"),
     "model.backbone.name: 'convnext_atto' in the checkpoint, 'vit_tiny_patch16_224' in the config"),
    (lambda c: c["heads"]["sem"].update(enabled=False), "model.heads.sem.enabled: True in the checkpoint, False"),
    (lambda c: c["neck"].update(channels=64), "model.neck.channels: 32 in the checkpoint, 64 in the config"),
], ids=["backbone", "head_disabled", "neck_width"])
def test_resume_with_another_model_names_the_keys(good, change, words):
    cfg = model_config()
    change(cfg)
    with pytest.raises(CheckpointError, match="cannot resume from .*good.ckpt: it was trained with another model") as e:
        check_resume(good, cfg, LOSS)
    assert words in str(e.value)


def test_resume_with_another_loss_weighting(good):
    with pytest.raises(CheckpointError, match="loss.weighting: 'fixed' in the checkpoint, 'uncertainty'"):
        check_resume(good, model_config(), {**LOSS, "weighting": "uncertainty"})


def test_evaluating_on_data_with_other_classes_names_the_key(good):
    hp = read_checkpoint(good)["hyper_parameters"]
    check_data_matches(hp["model"], {"name": "shapes", "num_classes": 3, "num_image_classes": 4}, good)
    check_data_matches(hp["model"], {"name": "cifar10", "num_classes": 0, "num_image_classes": 4}, good)
    with pytest.raises(CheckpointError, match=r"3 classes in its 'det' head but data 'coco' has 80 \(data.num_cl"):
        check_data_matches(hp["model"], {"name": "coco", "num_classes": 80, "num_image_classes": 0}, good)
    with pytest.raises(CheckpointError, match=r"'cls' head but data 'cifar10' has 10 \(data.num_image_classes\)"):
        check_data_matches(hp["model"], {"name": "cifar10", "num_classes": 0, "num_image_classes": 10}, good)
