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
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from fourm21.data.images import check_policy
from fourm21.errors import ConfigError, DatasetError

# data keys that name files or folders (checked when no ``prepare`` step or download makes them)
DATA_PATH_KEYS = ("root", "cifar10_root", "csv", "val_csv", "image_dir")


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _number(value: Any, key: str, low: float | None = None, high: float | None = None, *, integer: bool = False,
            low_open: bool = False, high_open: bool = False) -> None:
    """ConfigError naming ``key`` unless ``value`` is a number (an int with ``integer``) within the bounds."""
    kind = "an integer" if integer else "a number"
    if not (isinstance(value, int) if integer else _is_number(value)) or isinstance(value, bool):
        raise ConfigError(f"{key}: must be {kind}, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ConfigError(f"{key}: must be {'>' if low_open else '>='} {low:g}, got {value!r}")
    if high is not None and (value >= high if high_open else value > high):
        raise ConfigError(f"{key}: must be {'<' if high_open else '<='} {high:g}, got {value!r}")


def check_config(cfg: DictConfig) -> None:
    """Raise a ConfigError (or DatasetError / CheckpointError for paths) naming the first bad key."""
    if cfg.get("seed") is not None:
        _number(cfg.seed, "seed", 0, integer=True)
    if cfg.get("sem_label_stride") is not None:  # fourm21-predict / fourm21-eval
        _number(cfg.sem_label_stride, "sem_label_stride", 1, integer=True)
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
        _number(optim.lr, "optim.lr", 0, low_open=True)
    if "weight_decay" in optim:
        _number(optim.weight_decay, "optim.weight_decay", 0)
    if "warmup_frac" in optim:
        _number(optim.warmup_frac, "optim.warmup_frac", 0, 1, high_open=True)
    if "min_lr_ratio" in optim:
        _number(optim.min_lr_ratio, "optim.min_lr_ratio", 0, 1)
    if "betas" in optim:
        betas = optim.betas
        if not isinstance(betas, ListConfig | list) or len(betas) != 2:
            raise ConfigError(f"optim.betas: must be two numbers in [0, 1), got {betas!r}")
        for i, b in enumerate(betas):
            _number(b, f"optim.betas[{i}]", 0, 1, high_open=True)


def _check_loss(loss: DictConfig | None) -> None:
    if not loss:
        return
    if "weighting" in loss and loss.weighting not in ("fixed", "uncertainty"):
        raise ConfigError(f"loss.weighting: must be 'fixed' or 'uncertainty', got {loss.weighting!r}")
    for task, w in (loss.get("weights") or {}).items():
        _number(w, f"loss.weights.{task}", 0)


def _check_trainer(trainer: DictConfig | None) -> None:
    if not trainer:
        return
    max_epochs = trainer.get("max_epochs")
    if max_epochs is not None:
        _number(max_epochs, "trainer.max_epochs", 1, integer=True)
    every = trainer.get("check_val_every_n_epoch")
    if every is not None:
        _number(every, "trainer.check_val_every_n_epoch", 1, integer=True)
    clip = trainer.get("gradient_clip_val")
    if clip is not None:
        _number(clip, "trainer.gradient_clip_val", 0)
    if trainer.get("accelerator") in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator: '{trainer.accelerator}' but no CUDA device is visible; "
                          f"use trainer=cpu")


def _check_data(data: DictConfig) -> None:
    for key in ("img_size", "cifar_img_size"):
        if data.get(key) is not None:
            _number(data[key], f"data.{key}", 1, integer=True)
    if "on_bad_image" in data:
        check_policy(data.on_bad_image)
    for key in ("limit_train", "limit_val"):
        if data.get(key) is not None:
            _number(data[key], f"data.{key}", 1, integer=True)
    ratios = data.get("ratios")
    if isinstance(ratios, Mapping):
        for name, r in ratios.items():
            _number(r, f"data.ratios.{name}", 0)
        if not sum(ratios.values()) > 0:
            raise ConfigError(f"data.ratios: must not all be 0, got {dict(ratios)}")
    dm = data.get("datamodule") or {}
    sizes = dm.get("batch_size", 1)
    for key, size in (sizes.items() if isinstance(sizes, Mapping) else [("", sizes)]):
        _number(size, "data.datamodule.batch_size" + (f".{key}" if key else ""), 1, integer=True)
    if dm.get("num_workers") is not None:
        _number(dm.num_workers, "data.datamodule.num_workers", 0, integer=True)
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
            _number(s, f"model.heads.{name}.strides[{i}]", 1, integer=True)
            strides.append(s)
    max_stride = max(strides + [32])
    img_size = cfg.data.get("img_size") if cfg.get("data") is not None else None
    if img_size is not None and img_size % max_stride:
        raise ConfigError(f"data.img_size: {img_size} is not a multiple of the largest stride {max_stride}; "
                          f"use e.g. {max(max_stride, round(img_size / max_stride) * max_stride)}")
    data_name = cfg.data.get("name") if cfg.get("data") is not None else None
    for name, head in enabled.items():
        if name == "cls" and head.get("num_classes") is None and cfg.data.get("num_image_classes", 0) is None:
            continue  # data.num_image_classes: null is read from the training set's class folders
        if name == "mlc" and head.get("num_classes") is None and cfg.data.get("num_labels", 0) is None:
            continue  # data.num_labels: null is read from the training CSV's class ids
        if name in ("det", "sem") and head.get("num_classes") is None and cfg.data.get("num_classes", 0) is None:
            continue  # data.num_classes: null is read from the training set's categories (data=yolo, data=voc)
        if "num_classes" in head:
            _number(head.num_classes, f"model.heads.{name}.num_classes", integer=True)
            if head.num_classes < 1:
                raise ConfigError(f"model.heads.{name}.num_classes is {head.num_classes}: data '{data_name}' has no "
                                  f"labels for this head; disable it (model.heads.{name}.enabled=false) or pick an "
                                  f"experiment made for this data (e.g. experiment={data_name})")
    if "attr" in enabled and not enabled["attr"].get("groups") and "groups" not in (cfg.get("data") or {}):
        raise ConfigError(f"model.heads.attr is enabled but data '{data_name}' has no attribute columns "
                          f"(data.groups); disable it (model.heads.attr.enabled=false) or use experiment=attributes")
    det = enabled.get("det")
    if det is not None:
        for key, low, high, low_open in (("score_thr", 0, 1, False), ("iou_thr", 0, 1, True)):
            if key in det:
                _number(det[key], f"model.heads.det.{key}", low, high, low_open=low_open)
        if "max_det" in det:
            _number(det.max_det, "model.heads.det.max_det", 1, integer=True)
    if "sem" in enabled and "label_stride" in enabled["sem"]:
        _number(enabled["sem"].label_stride, "model.heads.sem.label_stride", 1, integer=True)
