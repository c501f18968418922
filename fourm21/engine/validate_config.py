"""Reject impossible configs before any work starts, naming the key at fault."""

from __future__ import annotations

from omegaconf import DictConfig

from fourm21.errors import ConfigError


def check_config(cfg: DictConfig) -> None:
    optim = cfg.get("optim") or {}
    if "lr" in optim and not float(optim.lr) > 0:
        raise ConfigError(f"optim.lr: must be > 0, got {optim.lr}")
    img_size = cfg.data.get("img_size")
    if img_size is not None and (not isinstance(img_size, int) or img_size <= 0):
        raise ConfigError(f"data.img_size: must be a positive integer, got {img_size!r}")
    heads = cfg.model.get("heads") or {}
    max_stride = max([max(h.get("strides") or [1]) for h in heads.values() if h is not None] + [32])
    if img_size is not None and img_size % max_stride:
        raise ConfigError(f"data.img_size: {img_size} is not a multiple of the largest stride {max_stride}")
    dm = cfg.data.get("datamodule") or {}
    if "batch_size" in dm and int(dm.batch_size) < 1:
        raise ConfigError(f"data.datamodule.batch_size: must be >= 1, got {dm.batch_size}")
    if int(cfg.trainer.get("max_epochs", 1) or 1) < 1:
        raise ConfigError(f"trainer.max_epochs: must be >= 1, got {cfg.trainer.max_epochs}")
