"""The task registry: a head finds its task through its class, tasks run after those they require, and a head
without a task or a missing required head is a one-line ConfigError naming the key."""

import pytest
import torch

from fourm21.errors import ConfigError
from fourm21.models.heads.base import Head
from fourm21.models.heads.classification import ClassificationHead
from fourm21.models.heads.detection import DetectionHead
from fourm21.models.heads.instance import InstanceMaskHead
from fourm21.tasks import registered, task_for_config, tasks_of, tasks_of_config
from fourm21.tasks.classification import ClassificationTask
from tests.conftest import model_config


def _heads(*classes: type) -> dict:
    return {cls.__name__: cls.__new__(cls) for cls in classes}


def test_the_built_in_kinds_are_registered():
    assert {"cls", "det", "inst", "sem", "attr", "mlc"} <= set(registered())  # (+ any a test module adds)


def test_every_task_follows_those_it_requires():
    heads = {"masks": InstanceMaskHead.__new__(InstanceMaskHead), "label": ClassificationHead.__new__(
        ClassificationHead), "boxes": DetectionHead.__new__(DetectionHead)}
    assert list(tasks_of(heads)) == ["boxes", "masks", "label"]


def test_a_subclass_of_a_head_keeps_its_task():
    sub = type("WiderClassificationHead", (ClassificationHead,), {})
    assert isinstance(tasks_of({"c": sub.__new__(sub)})["c"], ClassificationTask)


def test_a_head_class_without_a_task_names_its_key():
    depth = type("DepthHead", (Head,), {"__module__": "somewhere"})
    with pytest.raises(ConfigError, match=r"^model.heads.depth._target_: somewhere.DepthHead has no task"):
        tasks_of({"depth": depth()})


def test_an_unimportable_target_names_its_key():
    with pytest.raises(ConfigError, match=r"model.heads.depth._target_: cannot import 'nowhere.DepthHead'"):
        task_for_config("depth", {"_target_": "nowhere.DepthHead"})


def test_instance_masks_without_detection_name_the_key():
    cfg = model_config(**{"heads.det.enabled": False})
    with pytest.raises(ConfigError, match="model.heads.inst needs a 'det' head, which is disabled"):
        tasks_of_config(cfg)


def test_the_config_and_the_built_network_give_the_same_tasks():
    from fourm21.models.multitask import build_model

    cfg = model_config()
    net = build_model(cfg)
    kinds = {n: t.kind for n, t in tasks_of(net.heads).items()}
    assert kinds == {n: t.kind for n, t in tasks_of_config(cfg).items()}
    assert kinds == {"cls": "cls", "det": "det", "inst": "inst", "sem": "sem"}
    assert torch.is_tensor(net.heads["det"].scales)
