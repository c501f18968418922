"""Every config group composes, and the composed model config builds a network."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fourm21.engine.common import CONFIG_DIR
from fourm21.models.multitask import build_model

GROUPS = {p.name: sorted(f.stem for f in p.rglob("*.yaml")) for p in Path(CONFIG_DIR).iterdir() if p.is_dir()}


def _compose(name="train", overrides=()):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def test_there_are_groups():
    assert {"data", "model", "loss", "optim", "trainer", "callbacks", "logger", "paths", "experiment"} <= set(GROUPS)


def _resolved(name: str, overrides: list[str]) -> dict:
    """Compose as the CLI does and resolve every interpolation (a broken one raises), Hydra's own node aside."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # for ${hydra:...}
    with open_dict(cfg):
        cfg.pop("hydra")
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("group, option", [(g, o) for g in ("data", "loss", "optim", "trainer", "callbacks", "logger",
                                                            "paths", "experiment") for o in GROUPS[g]])
def test_every_group_option_composes_and_resolves(group, option):
    cfg = _resolved("train", [f"{group}={option}"])
    assert cfg[group if group != "experiment" else "data"] is not None


@pytest.mark.parametrize("name", ["eval", "predict", "export", "fewshot", "pretrain"])
def test_every_cli_config_resolves(name):
    assert _resolved(name, [])


def test_a_broken_interpolation_fails_the_resolve(tmp_path):
    with pytest.raises(Exception, match="no_such_key"):
        _resolved("train", ["+trainer.broken=${data.no_such_key}"])


@pytest.mark.parametrize("backbone", sorted(f.stem for f in (Path(CONFIG_DIR) / "model" / "backbone").glob("*.yaml")))
def test_every_backbone_builds_the_whole_network(backbone):
    cfg = _compose(overrides=[f"model/backbone={backbone}"])
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model = build_model(model_cfg)
    assert set(model.heads) == {"cls", "det", "inst", "sem"}


def test_eval_config_composes():
    cfg = _compose("eval", ["ckpt_path=x.ckpt"])
    assert cfg.ckpt_path == "x.ckpt" and cfg.data.name == "shapes"


@pytest.mark.parametrize("experiment", GROUPS.get("experiment", []))
def test_every_experiment_composes_and_builds(experiment):
    cfg = _compose(overrides=[f"experiment={experiment}"])
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    for head in ("cls", "det", "sem", "mlc"):  # class counts fourm21-train reads from the training data
        if model_cfg["heads"][head]["enabled"] and model_cfg["heads"][head]["num_classes"] is None:
            model_cfg["heads"][head]["num_classes"] = 4
    if model_cfg["heads"]["attr"]["enabled"] and not model_cfg["heads"]["attr"]["groups"]:
        # fourm21-train reads the class count of each group from the training CSV
        model_cfg["heads"]["attr"]["groups"] = {g: 3 for g in cfg.data.groups or ("scene", "count")}
    model = build_model(model_cfg)
    enabled = {k for k, h in cfg.model.heads.items() if h.enabled}
    assert set(model.heads) == enabled
