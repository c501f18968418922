"""fourm21-train: fit the multitask network, then evaluate the best checkpoint and write the report.

    fourm21-train                                     # the default: shapes, convnext_atto, CPU
    fourm21-train model/backbone=vit_tiny trainer.max_epochs=3
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, open_dict

from fourm21.engine.common import CONFIG_DIR, friendly_errors, run_dir_of, save_config, setup_runtime
from fourm21.engine.validate_config import check_config, check_heads, heads_follow_data
from fourm21.errors import ConfigError
from fourm21.tasks import tasks_of_config
from fourm21.training.callbacks import NonFiniteGuard
from fourm21.training.evaluation import data_report, evaluate_module, print_summary
from fourm21.training.report_loggers import check_logger_packages, log_report, tracker_error
from fourm21.training.semi_supervised import module_class


def build_callbacks(cfg: DictConfig, run_dir: Path) -> list:
    callbacks = []
    for cb_cfg in (cfg.get("callbacks") or {}).values():
        if cb_cfg is None or "_target_" not in cb_cfg:
            continue
        kwargs = {}
        if "dirpath" in cb_cfg and cb_cfg.dirpath is None:
            kwargs["dirpath"] = str(run_dir / "checkpoints")
        callbacks.append(instantiate(cb_cfg, **kwargs))
    return callbacks


def build_loggers(cfg: DictConfig, run_dir: Path) -> list:
    """One Lightning logger per entry of ``logger`` (``save_dir: null`` = the run dir); a missing optional
    package or a tracker refusing its settings is a one-line ConfigError naming the entry."""
    loggers = []
    for key, lg_cfg in (cfg.get("logger") or {}).items():
        if lg_cfg is None or "_target_" not in lg_cfg:
            continue
        check_logger_packages(key, lg_cfg)
        kwargs = {"save_dir": str(run_dir)} if "save_dir" in lg_cfg and lg_cfg.save_dir is None else {}
        try:
            loggers.append(instantiate(lg_cfg, **kwargs))
        except Exception as e:
            user = tracker_error(key, e)
            if user is None:
                raise
            raise user from e
    return loggers


def fill_from_data(cfg: DictConfig, datamodule) -> None:
    """Head sizes and class lists the config leaves to the data (``data.num_classes: null``, attribute groups,
    multi-label class ids ...) are read from the training sets by each enabled head's task and written into
    ``cfg`` (so config.yaml records them; the class lists reach the checkpoint's meta from the val sets)."""
    for name, task in tasks_of_config(cfg.model).items():
        task.fill_from_data(cfg, name, datamodule)


def attach_unlabelled(cfg: DictConfig, datamodule) -> None:
    """``semi.enabled``: the unlabelled images join every training batch for pseudo-labelling."""
    semi = cfg.get("semi")
    if semi is None or not semi.get("enabled"):
        return
    if not hasattr(datamodule, "attach_unlabelled"):
        raise ConfigError(f"semi.enabled: data '{cfg.data.get('name')}' has no datamodule that takes unlabelled images")
    datamodule.prepare_data()  # the default unlabelled folder is the generated shapes set
    dataset = instantiate(semi.dataset)  # friendly_errors unwraps a DatasetError from Hydra's wrapper
    datamodule.attach_unlabelled(dataset, semi.batch_size)


def resume_path(cfg: DictConfig, run_dir: Path) -> str | None:
    """``ckpt_path``: null (fresh run), ``last`` (this run dir's checkpoints/last.ckpt) or a file."""
    ckpt = cfg.get("ckpt_path")
    if ckpt is None:
        return None
    path = run_dir / "checkpoints" / "last.ckpt" if str(ckpt) == "last" else Path(str(ckpt))
    if not path.is_file():
        hint = (f"; to resume a run, point hydra.run.dir at its directory (found no {path})" if str(ckpt) == "last"
                else "")
        raise ConfigError(f"ckpt_path: checkpoint not found: {path}{hint}")
    return str(path)


def heads_enabled_on_command_line() -> set[str]:
    """Heads whose ``enabled`` the command line sets (``model.heads.det.enabled=true``): they do not follow the
    data. None outside Hydra's command line (a config composed in code)."""
    if not HydraConfig.initialized():
        return set()
    names = set()
    for o in OverridesParser.create().parse_overrides(list(HydraConfig.get().overrides.task)):
        parts = o.key_or_group.split(".")
        if parts[:2] != ["model", "heads"] or len(parts) < 3:
            continue
        value = None if o.is_sweep_override() else o.value()
        if parts[3:] == ["enabled"] or (len(parts) == 3 and isinstance(value, dict) and "enabled" in value):
            names.add(parts[2])
    return names


def switch_off_unlabelled_heads(cfg: DictConfig, explicit: set[str]) -> None:
    """``heads_follow_data`` with its one printed line per head switched off (rank 0)."""
    for name, why in heads_follow_data(cfg, explicit).items():
        if rank_zero_only.rank == 0:
            print(f"fourm21: head '{name}' switched off: {why}", flush=True)


def report_validates(cfg: DictConfig, callbacks: list) -> bool:
    """Whether fit's only validation, after its last epoch, would repeat the report's evaluation: the run
    validates once at the end (``trainer.check_val_every_n_epoch`` = ``max_epochs``, the default), evaluates
    right after (``evaluate=true``) on the same split, and nothing but ``ModelCheckpoint`` reads val metrics. Then
    fit skips it (3-4 s of the default run) and ``best.ckpt``, the one candidate, is the final weights. Not when
    a head tunes on validation what the checkpoint keeps (``Task.tunes_on_validation``)."""
    t = cfg.trainer
    max_epochs = t.get("max_epochs")
    return bool(cfg.get("evaluate", True) and not t.get("fast_dev_run") and isinstance(max_epochs, int)
                and max_epochs > 0 and t.get("check_val_every_n_epoch") == max_epochs
                and t.get("max_steps") in (None, -1) and t.get("val_check_interval") in (None, 1.0)
                and t.get("limit_val_batches") in (None, 1.0)
                and not any(getattr(c, "monitor", None) for c in callbacks if not isinstance(c, ModelCheckpoint))
                and not any(task.tunes_on_validation(cfg.model.heads[name])
                            for name, task in tasks_of_config(cfg.model).items()))


def run_train(cfg: DictConfig) -> dict[str, float]:
    """Train, evaluate, report. Returns the report's metrics."""
    run_dir = run_dir_of(cfg)
    resume_from = resume_path(cfg, run_dir)
    if resume_from:
        with open_dict(cfg):
            cfg.ckpt_path = resume_from  # `last` -> the file, which check_config compares with this config
    explicit = heads_enabled_on_command_line()
    switch_off_unlabelled_heads(cfg, explicit)
    check_config(cfg)
    setup_runtime(cfg)
    datamodule = instantiate(cfg.data.datamodule)
    fill_from_data(cfg, datamodule)
    switch_off_unlabelled_heads(cfg, explicit)  # sizes the data filled in may be 0 too
    check_heads(cfg)  # only the heads: paths and the resume checkpoint were checked above
    attach_unlabelled(cfg, datamodule)
    if rank_zero_only.rank == 0:  # under DDP every process runs this script, in the same run dir
        save_config(cfg, run_dir)  # with what the data filled in (class counts, attribute groups)
    module = module_class(cfg.get("semi")).from_config(cfg)
    callbacks = build_callbacks(cfg, run_dir)
    skip_val = report_validates(cfg, callbacks)
    extra_kwargs = {"check_val_every_n_epoch": int(cfg.trainer.max_epochs) + 1} if skip_val else {}
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=build_loggers(cfg, run_dir) or False,
                          default_root_dir=str(run_dir), **extra_kwargs)
    t0 = time.time()
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
    ckpt = next((c for c in callbacks if isinstance(c, ModelCheckpoint)), None)
    best = ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None
    if skip_val and ckpt is not None and best is None and ckpt.dirpath and not trainer.interrupted:
        # no validation ran in fit: the final weights are best.ckpt, evaluated below as they always were
        best = str(Path(ckpt.dirpath) / f"{ckpt.filename or 'best'}{ckpt.FILE_EXTENSION}")
        trainer.save_checkpoint(best)
    train_s = time.time() - t0  # the checkpoints written, as before
    extra = {"time/train_s": train_s}
    guard = next((c for c in callbacks if isinstance(c, NonFiniteGuard)), None)
    if guard is not None:
        extra["train/nonfinite_skipped"] = float(guard.skipped)
    train_loss = trainer.callback_metrics.get("train/loss_epoch", trainer.callback_metrics.get("train/loss"))
    if train_loss is not None:
        extra["train/loss"] = float(train_loss)
    if cfg.get("evaluate", True) and not cfg.trainer.get("fast_dev_run"):
        metrics = evaluate_module(trainer, module, datamodule, run_dir, ckpt_path=best or None, extra=extra,
                                  plots=cfg.get("plots", True), title="fourm21 training report",
                                  error_analysis_cfg=cfg.error_analysis)
    else:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        metrics.update(extra)
        metrics.update(data_report(datamodule, run_dir))
        if trainer.is_global_zero:
            from fourm21.metrics.report import write_report
            write_report(run_dir, metrics, title="fourm21 training report (not evaluated)")
    if trainer.is_global_zero:
        print_summary(metrics, run_dir)
        log_report(trainer.loggers, metrics, run_dir, step=trainer.global_step)
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
@friendly_errors
def main(cfg: DictConfig) -> None:
    run_train(cfg)


if __name__ == "__main__":
    main()
