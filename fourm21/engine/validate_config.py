"""Reject impossible configs before any work starts, naming the key at fault.

Hydra already rejects unknown keys (``trainer.max_epoch=3``); ``check_config`` catches wrong types
and impossible values (``optim.lr=-1``, an image size that is not a multiple of the largest
stride, ``data.on_bad_image=maybe``), heads enabled on data without their labels, data paths that
do not exist, and a resume checkpoint that is cut short or of another model. It works on the
train, eval and pretrain configs alike: sections a config lacks are not checked.

Before it, ``fourm21-train`` lets the heads follow the data (``heads_follow_data``): a head the data has no
labels for is switched off, unless the command line enabled it, so ``data=imagefolder`` trains as it is.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from fourm21.data.images import check_policy
from fourm21.errors import ConfigError, DatasetError, check_number
from fourm21.tasks import override_values, task_for_config, tasks_of_config
from fourm21.tasks.registry import enabled_entries

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
        check_heads(cfg)
        if cfg.get("ckpt_path") and cfg.get("task_name", "train") == "train":  # resuming training
            from fourm21.inference.checkpoints import check_resume
            to = lambda c: OmegaConf.to_container(c, resolve=True) if c is not None else None  # noqa: E731
            check_resume(cfg.ckpt_path, to(cfg.model), to(cfg.get("loss")))


def heads_follow_data(cfg: DictConfig, explicit: Collection[str] = ()) -> dict[str, str]:
    """Switch off, in ``cfg``, each enabled head the training data has no labels for (its size key is 0 and so is
    the data key it reads, ``Task.data_keys``, or the data lacks that key), then the heads that require one of
    those. A head in ``explicit`` (enabled on the command line) stays on, for ``check_config`` to reject.
    Returns ``{head: why it is off}``; a ConfigError when no head is left to train."""
    data, model = cfg.get("data"), cfg.get("model")
    if data is None or model is None:
        return {}
    data_name = data.get("name")
    tasks = {name: task_for_config(name, h) for name, h in enabled_entries(model).items() if "_target_" in h}
    off: dict[str, str] = {}
    for name, task in tasks.items():
        head = model.heads[name]
        for own, key in task.data_keys.items():
            size = head.get(own)
            unlabelled = key not in data or data[key] == 0
            if name in explicit or own not in head or not _is_zero(size) or not unlabelled:
                continue
            why = f"data.{key} is 0" if key in data else f"no data.{key}"
            off[name] = f"data '{data_name}' has no labels for it ({why})"
            break
    kinds_off = {tasks[n].kind: n for n in off}
    for _ in range(len(tasks)):  # a head reading a switched-off one goes too (and one reading that ...)
        on = {t.kind for n, t in tasks.items() if n not in off}
        for name, task in tasks.items():
            gone = [kinds_off[k] for k in task.requires if k in kinds_off and k not in on]
            if name not in off and name not in explicit and gone:
                off[name] = f"it needs head '{gone[0]}', which is off"
                kinds_off[task.kind] = name
    off = {name: off[name] for name in tasks if name in off}  # in config order
    with open_dict(cfg):
        for name in off:
            model.heads[name].enabled = False
    if not enabled_entries(model):
        if off:
            raise ConfigError(f"model.heads: no head is left on: data '{data_name}' has labels for none of the "
                              f"enabled heads ({', '.join(off)}); enable a head this data labels "
                              f"(model.heads.<name>.enabled=true) or pick an experiment made for this data "
                              f"(e.g. experiment={data_name})")
        raise ConfigError("model.heads: every head is disabled; enable one (model.heads.<name>.enabled=true)")
    return off


def _is_zero(size: object) -> bool:
    """A head size that cannot be trained (0 classes / keypoints); null (read from the data) is not."""
    return isinstance(size, int) and not isinstance(size, bool) and size < 1


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


def check_heads(cfg: DictConfig) -> None:
    """The enabled heads' strides against the image size and each head's own keys (its task's check)."""
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
