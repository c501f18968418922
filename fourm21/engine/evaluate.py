"""fourm21-eval: evaluate a checkpoint, or an export (the directory fourm21-export writes: ONNX, OpenVINO, f32 or
int8), on a data set's val split; writes report.json, report.md and plots."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.utils import instantiate
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from fourm21.engine.common import CONFIG_DIR, friendly_errors, run_dir_of, setup_runtime
from fourm21.engine.validate_config import check_config
from fourm21.errors import ConfigError
from fourm21.inference.checkpoints import check_data_matches, stored_data_config
from fourm21.tasks import override_values
from fourm21.training.evaluation import evaluate_module, load_module, print_summary
from fourm21.training.exported import export_directory, export_source, load_export_module

# a pick of one of these groups on the command line evaluates on the composed data config, not the checkpoint's
DATA_GROUPS = ("data", "experiment")


def picks_data(override: Override) -> bool:
    """``data=coco``, ``+experiment=x``, ``~data`` ...: the command line chooses the data itself."""
    return override.key_or_group.split("/")[0] in DATA_GROUPS


def apply_override(cfg: DictConfig, override: Override) -> None:
    """One parsed ``key=value`` / ``+key=value`` / ``++key=value`` / ``~key`` applied to ``cfg`` as Hydra
    applies it when composing; a ConfigError naming the override when the key is not there."""
    key, value = override.key_or_group, override.value()
    try:
        if override.is_delete():
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent)
            if not isinstance(node, DictConfig) or leaf not in node:
                raise KeyError(key)
            with open_dict(node):
                del node[leaf]
        else:
            OmegaConf.update(cfg, key, value, merge=True, force_add=override.is_add() or override.is_force_add())
    except (KeyError, OmegaConfBaseException):
        raise ConfigError(f"{override.input_line}: the data config stored in the checkpoint "
                          f"('{cfg.data.get('name')}') has no key {key}; drop it, add it with "
                          f"+{override.input_line.lstrip('+~')}, or pick the data yourself (data=...)") from None


def use_checkpoint_data(cfg: DictConfig, stored: Mapping[str, Any] | None, overrides: list[str]) -> list[str] | None:
    """Evaluate on the data the checkpoint was trained with: ``cfg.data`` becomes the ``stored`` (unresolved) data
    config with the command line's ``data.*`` ``overrides`` applied on top, so ``data.root=`` moves every path
    that interpolates it. Returns the overrides applied; None (``cfg`` untouched) when the checkpoint stores
    no data config (written before fourm21 did) or the command line picks a data group or an experiment."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    if stored is None or any(picks_data(o) for o in parsed):
        return None
    with open_dict(cfg):
        cfg.data = OmegaConf.create(dict(stored))
    applied = [o for o in parsed if o.key_or_group.startswith("data.")]
    for o in applied:
        apply_override(cfg, o)
    return [str(o.input_line) for o in applied]


def command_line_overrides() -> list[str]:
    """The task overrides of this Hydra run (``data.root=X``, ``stage=test`` ...); none outside Hydra."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def run_eval(cfg: DictConfig) -> dict[str, float]:
    export = export_directory(cfg.ckpt_path)  # None: a checkpoint
    # an export holds no data config (it would carry local paths): the data its checkpoint was trained with
    source = cfg.ckpt_path if export is None else cfg.get("data_from") or export_source(export)
    applied = use_checkpoint_data(cfg, stored_data_config(source) if source else None, command_line_overrides())
    if applied is not None and rank_zero_only.rank == 0:  # DDP's other processes run this too
        on_top = f", with {' '.join(applied)}" if applied else ""
        which = "the checkpoint" if export is None else f"{source}, the checkpoint of this export,"
        print(f"fourm21-eval: data '{cfg.data.get('name')}' as {which} was trained{on_top} "
              f"(data=... or experiment=... evaluates on other data)")
    elif export is not None and rank_zero_only.rank == 0:
        print(f"fourm21-eval: the export on data '{cfg.data.get('name')}' as composed (data_from=<its checkpoint> "
              f"evaluates it on the data that was trained with)")
    if export is not None and str(cfg.trainer.get("precision")) == "auto":  # it runs at its own precision
        with open_dict(cfg):
            cfg.trainer.precision = "32-true"  # and decoding in fp32, as fourm21.load decodes it
    check_config(cfg)
    setup_runtime(cfg)
    run_dir = run_dir_of(cfg)
    module = load_module(cfg.ckpt_path) if export is None else load_export_module(export)
    module.decode_overrides = override_values(cfg)  # keys no head of this model takes are ignored
    check_data_matches(module.hparams.model, cfg.data, cfg.ckpt_path)
    datamodule = instantiate(cfg.data.datamodule)
    datamodule.setup("validate")
    trainer = instantiate(cfg.trainer, logger=False, default_root_dir=str(run_dir), enable_checkpointing=False)
    metrics = evaluate_module(trainer, module, datamodule, run_dir, extra=None, plots=cfg.plots,
                              stage=cfg.get("stage", "val"), title=f"fourm21 evaluation of {cfg.ckpt_path}",
                              error_analysis_cfg=cfg.error_analysis)
    if trainer.is_global_zero:
        print_summary(metrics, run_dir)
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
@friendly_errors
def main(cfg: DictConfig) -> None:
    run_eval(cfg)


if __name__ == "__main__":
    main()
