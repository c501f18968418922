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


# Builders whose every setting comes from the config: a ``.get("key", literal)`` there would let a code default
# stand in for a YAML key (``enabled`` excepted: a head entry without it is on).
BUILDERS = ["fourm21/models", "fourm21/tasks", "fourm21/losses", "fourm21/inference/model.py",
            "fourm21/inference/decode.py", "fourm21/training/module.py", "fourm21/training/semi_supervised.py"]


def _defaulted_gets(source: str) -> list[tuple[int, str]]:
    """(line, key) of each ``x.get("key", <literal other than None>)`` not compared with ``is None``."""
    import ast

    tree = ast.parse(source)
    compared = {id(n.left) for n in ast.walk(tree) if isinstance(n, ast.Compare)
                and any(isinstance(op, ast.Is | ast.IsNot) for op in n.ops)}
    return [(n.lineno, n.args[0].value) for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "get"
            and len(n.args) == 2 and isinstance(n.args[0], ast.Constant) and isinstance(n.args[0].value, str)
            and isinstance(n.args[1], ast.Constant) and n.args[1].value is not None and id(n) not in compared
            and n.args[0].value != "enabled"]


def test_the_check_finds_a_defaulted_key():
    assert _defaulted_gets('a = cfg.get("hidden", 128)\nb = cfg.get("x", 0) is None\nc = h.get("enabled", True)') \
        == [(1, "hidden")]


def test_no_builder_reads_a_key_with_a_code_default():
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    files = [f for b in BUILDERS for f in ((repo / b).rglob("*.py") if (repo / b).is_dir() else [repo / b])]
    found = [f"{f.relative_to(repo)}:{line}: .get({key!r}, ...)" for f in files
             for line, key in _defaulted_gets(f.read_text())]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("key", ["fusion.enabled", "fusion.hidden", "fusion.use_class_probs", "channels_last",
                                 "neck.skip_unused", "heads.mlc.text.dim"])
def test_a_key_left_out_of_the_model_config_is_named(key):
    """build_model reads these keys (no code default): leaving one out is a ConfigError naming it."""
    from fourm21.errors import ConfigError
    from fourm21.models.multitask import build_model
    from tests.conftest import model_config

    cfg = model_config(**{"heads.mlc.enabled": True, "heads.mlc.num_classes": 3})
    *parents, leaf = key.split(".")
    node = cfg
    for p in parents:
        node = node[p]
    del node[leaf]
    with pytest.raises(ConfigError, match=rf"model\.{key.replace('.', chr(92) + '.')} is missing"):
        build_model(cfg)
