"""The YAML is the one source of hyper-parameters: every keyword a config-built fourm21 class takes with a
default is a key of its config node, and any default left in the code equals the base YAML's value
(experiments may override it)."""

import inspect

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from fourm21.engine.common import CONFIG_DIR
from fourm21.losses.multitask import MultiTaskLoss
from fourm21.models.backbone import TimmBackbone
from fourm21.models.neck import FpnPan

# set by the code that builds the object, not by a user: the channels the head reads, the heads the loss sums
BUILT_IN_CODE = {"in_channels", "names"}


def _targets(node, path=""):
    """(config path, node) for every node with a fourm21 ``_target_`` (model heads, loss, data, callbacks ...)."""
    if isinstance(node, DictConfig):
        if str(node.get("_target_", "")).startswith("fourm21."):
            yield path, node
        for key in node:
            yield from _targets(node[key], f"{path}.{key}" if path else str(key))


def _defaults(obj) -> dict:
    return {n: p.default for n, p in inspect.signature(obj).parameters.items()
            if p.default is not inspect.Parameter.empty and n not in BUILT_IN_CODE}


@pytest.mark.parametrize("experiment", [None, "coco", "cifar10", "mixed", "attributes", "multilabel_captions"])
def test_model_and_loss_defaults_are_the_yaml_values(experiment):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={experiment}"] if experiment else [])
    checked = [(f"model.{p}", n, get_object(n._target_)) for p, n in _targets(cfg.model)]
    checked += [("model.neck", cfg.model.neck, FpnPan), ("loss", cfg.loss, MultiTaskLoss)]
    if cfg.model.backbone.get("name") == "convnext_atto":
        checked.append(("model.backbone", cfg.model.backbone, TimmBackbone))
    wrong = []
    for path, node, obj in checked:
        for name, default in _defaults(obj).items():
            if name not in node:
                wrong.append(f"{path}.{name}: not in the YAML (the code's default {default!r} stands in)")
            elif experiment is None and not OmegaConf.is_interpolation(node, name) and default is not None \
                    and OmegaConf.to_object(node)[name] != default and not isinstance(default, (list, tuple)):
                wrong.append(f"{path}.{name}: code default {default!r} != YAML {node[name]!r}")
    assert not wrong, "\n".join(wrong)


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _yaml_value(node: DictConfig, name: str):
    value = node[name]
    return OmegaConf.to_object(value) if isinstance(value, DictConfig | ListConfig) else value


def _tuned(default) -> bool:
    """A default that is a chosen number, not an off / identity value (0, 1, None, False, (1, 1), (0, 0))."""
    if isinstance(default, bool) or default is None:
        return False
    if isinstance(default, int | float):
        return default not in (0, 1)
    if isinstance(default, list | tuple) and default and all(isinstance(v, int | float) for v in default):
        return len(set(default)) > 1 or default[0] not in (0, 1)
    return False


@pytest.mark.parametrize("data", ["shapes", "coco", "cifar10", "mixed", "mixed_shapes", "attributes",
                                  "multilabel_captions", "image_folder", "yolo", "voc"])
def test_data_and_callback_classes_leave_no_tuned_default_in_code(data):
    """Data modules, data sets, transforms and callbacks: a keyword the YAML sets has no tuned default in
    code (an augmentation, a batch size) that differs from the YAML's value: defaults there are off (0, 1,
    None, identity) or the value the config gives, so the code never contradicts the YAML."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"data={data}"])
    wrong = []
    for root in ("data", "semi", "callbacks"):
        for path, node in _targets(cfg[root], root):
            for name, default in _defaults(get_object(node._target_)).items():
                if name in node and _tuned(default) and _yaml_value(node, name) != _plain(default):
                    wrong.append(f"{path}.{name}: code default {default!r} != YAML {_yaml_value(node, name)!r}")
    assert not wrong, "\n".join(wrong)
