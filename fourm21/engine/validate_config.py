"""Reject impossible configs before any work starts, naming the key at fault.

Hydra already rejects unknown keys (``trainer.max_epoch=3``); ``check_config`` catches wrong types
and impossible values (``optim.lr=-1``, an image size that is not a multiple of the largest
stride, ``data.on_bad_image=maybe``), heads enabled on data without their labels, data paths that
do not exist, and a resume checkpoint that is cut short or of another model. It works on the
train, eval and pretrain configs alike: sections a config lacks are not checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from fourm21.data.images import check_policy
from fourm21.errors import ConfigError, DatasetError, check_number
from fourm21.tasks import override_values, tasks_of_config

# data keys that name files or folders (checked when no ``prepare`` step or download makes them)
DATA_PATH_KEYS = ("root", "cifar10_root", "csv", "val_csv", "image_dir")


def check_config(cfg: DictConfig) -> None:
    """Raise a ConfigError (or DatasetError / CheckpointError for paths) naming the first bad key."""
    if cfg.get("seed") is not None:
        check_number(cfg.seed, "seed", 0, integer=True)
    override_values(cfg)  # fourm21-predict / -eval / -serve: score_thr, max_det ... checked by the tasks taking them
    _check_optim(cfg.get("optim"))
    _check_loss(cfg.get("loss"))
    _check_trainer(cfg.get("trainer"))
    if cfg.get("data") is not None:
        _check_data(cfg.data)
    if cfg.get("model") is not None:
        _check_heads(cfg)
        if cfg.get("ckpt_path") and cfg.get("task_name", "train") == "train":  # resuming training
            from fourm21.inference.checkpoints import check_resume
            to = lambda c: OmegaConf.to_container(c, resolve=True) if c is not None else None  # noqa: E731
            check_resume(cfg.ckpt_path, to(cfg.model), to(cfg.get("loss")))


def _check_optim(optim: DictConfig | None) -> None:
    if not optim:
        return
    if "lr" in optim:
        check_number(optim.lr, "optim.lr", 0, low_open=True)
    if "weight_decay" in optim:
        check_number(optim.weight_decay, "optim.weight_decay", 0)
    if "warmup_frac" in optim:
        check_number(optim.warmup_frac, "optim.warmup_frac", 0, 1, high_open=True)
    if "min_lr_ratio" in optim:
        check_number(optim.min_lr_ratio, "optim.min_lr_ratio", 0, 1)
    if "betas" in optim:
        betas = optim.betas
        if not isinstance(betas, ListConfig | list) or len(betas) != 2:
            raise ConfigError(f"optim.betas: must be two numbers in [0, 1), got {betas!r}")
        for i, b in enumerate(betas):
            check_number(b, f"optim.betas[{i}]", 0, 1, high_open=True)


def _check_loss(loss: DictConfig | None) -> None:
    if not loss:
        return
    if "weighting" in loss and loss.weighting not in ("fixed", "uncertainty"):
        raise ConfigError(f"loss.weighting: must be 'fixed' or 'uncertainty', got {loss.weighting!r}")
    for task, w in (loss.get("weights") or {}).items():
        check_number(w, f"loss.weights.{task}", 0)


def _check_trainer(trainer: DictConfig | None) -> None:
    if not trainer:
        return
    max_epochs = trainer.get("max_epochs")
    if max_epochs is not None:
        check_number(max_epochs, "trainer.max_epochs", 1, integer=True)
    every = trainer.get("check_val_every_n_epoch")
    if every is not None:
        check_number(every, "trainer.check_val_every_n_epoch", 1, integer=True)
    clip = trainer.get("gradient_clip_val")
    if clip is not None:
        check_number(clip, "trainer.gradient_clip_val", 0)
    if trainer.get("accelerator") in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator: '{trainer.accelerator}' but no CUDA device is visible; "
                          f"use trainer=cpu")


def _check_data(data: DictConfig) -> None:
    for key in ("img_size", "cifar_img_size"):
        if data.get(key) is not None:
            check_number(data[key], f"data.{key}", 1, integer=True)
    if "on_bad_image" in data:
        check_policy(data.on_bad_image)
    for key in ("limit_train", "limit_val"):
        if data.get(key) is not None:
            check_number(data[key], f"data.{key}", 1, integer=True)
    ratios = data.get("ratios")
    if isinstance(ratios, Mapping):
        for name, r in ratios.items():
            check_number(r, f"data.ratios.{name}", 0)
        if not sum(ratios.values()) > 0:
            raise ConfigError(f"data.ratios: must not all be 0, got {dict(ratios)}")
    dm = data.get("datamodule") or {}
    sizes = dm.get("batch_size", 1)
    for key, size in (sizes.items() if isinstance(sizes, Mapping) else [("", sizes)]):
        check_number(size, "data.datamodule.batch_size" + (f".{key}" if key else ""), 1, integer=True)
    if dm.get("num_workers") is not None:
        check_number(dm.num_workers, "data.datamodule.num_workers", 0, integer=True)
    if not dm.get("prepare") and not data.get("download"):  # nothing will create the paths: they must exist
        for key in DATA_PATH_KEYS:
            value = data.get(key)
            if isinstance(value, str) and value and not Path(value).exists():
                raise DatasetError(f"data.{key}: {value} does not exist")


def _check_heads(cfg: DictConfig) -> None:
    heads = cfg.model.get("heads") or {}
    enabled = {name: h for name, h in heads.items() if h is not None and h.get("enabled", True)}
    strides = []
    for name, h in enabled.items():
        for i, s in enumerate(h.get("strides") or []):
            check_number(s, f"model.heads.{name}.strides[{i}]", 1, integer=True)
            strides.append(s)
    max_stride = max(strides + [32])
    img_size = cfg.data.get("img_size") if cfg.get("data") is not None else None
    if img_size is not None and img_size % max_stride:
        raise ConfigError(f"data.img_size: {img_size} is not a multiple of the largest stride {max_stride}; "
                          f"use e.g. {max(max_stride, round(img_size / max_stride) * max_stride)}")
    # each head's own keys, checked by its task (an eval config may name a checkpoint's heads without _target_)
    built = {name: h for name, h in enabled.items() if "_target_" in h}
    for name, task in tasks_of_config({"heads": built}).items():
        task.check_config(cfg, name, enabled[name])
