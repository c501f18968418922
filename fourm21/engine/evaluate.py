"""fourm21-eval: evaluate a checkpoint on a data set's val split; writes report.json, report.md and plots."""

from __future__ import annotations

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from fourm21.engine.common import CONFIG_DIR, friendly_errors, run_dir_of, setup_runtime
from fourm21.engine.validate_config import check_config
from fourm21.inference.checkpoints import check_data_matches
from fourm21.tasks import override_values
from fourm21.training.evaluation import evaluate_module, load_module, print_summary


def run_eval(cfg: DictConfig) -> dict[str, float]:
    check_config(cfg)
    setup_runtime(cfg)
    run_dir = run_dir_of(cfg)
    module = load_module(cfg.ckpt_path)
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
