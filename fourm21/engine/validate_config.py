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
    sizes = dm.get("batch_size", 1)
    for key, size in (sizes.items() if isinstance(sizes, DictConfig) else [("", sizes)]):
        if not isinstance(size, int) or size < 1:
            name = "data.datamodule.batch_size" + (f".{key}" if key else "")
            raise ConfigError(f"{name}: must be an integer >= 1, got {size!r}")
    if int(cfg.trainer.get("max_epochs", 1) or 1) < 1:
        raise ConfigError(f"trainer.max_epochs: must be >= 1, got {cfg.trainer.max_epochs}")
    for name, head in heads.items():
        if head is None or not head.get("enabled", True):
            continue
        if "num_classes" in head and int(head.num_classes) < 1:
            raise ConfigError(f"model.heads.{name}.num_classes is {head.num_classes}: data '{cfg.data.get('name')}' "
                              f"has no labels for this head; disable it (model.heads.{name}.enabled=false) "
                              f"or pick an experiment made for this data (e.g. experiment={cfg.data.get('name')})")
