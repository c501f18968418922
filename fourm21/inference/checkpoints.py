"""Reading fourm21 checkpoints, with a CheckpointError that names the file and what differs.

Every place that loads a ``.ckpt`` goes through here: ``fourm21-eval`` (``load_module``), the Python
API and predict (``load_checkpoint``), resuming training (``check_resume``) and evaluating a
checkpoint on a data set (``check_data_matches``, ``stored_data_config``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fourm21.errors import CheckpointError

# meta key of the run's data config, unresolved (``${data.root}`` follows a ``data.root=`` override): what
# fourm21-eval evaluates on by default; a training concern with local paths, so inference meta leaves it out
DATA_CONFIG = "data_config"


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """The dict of a fourm21 training checkpoint (``weights_only`` load on the CPU; ``mmap``: the tensors stay
    on disk until touched, for a reader that wants only the hyper-parameters).

    A CheckpointError names the file when it is missing, empty, cut short, not a PyTorch file or
    not a fourm21 training checkpoint (no model config inside)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): an interrupted save or copy; use another "
                              f"checkpoint (e.g. last.ckpt) or copy it again")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 - torch raises many types for cut or foreign files
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, EOFError) or any(s in detail for s in ("central directory", "failed reading zip",
                                                                "unexpected EOF", "truncated")):
            raise CheckpointError(f"checkpoint {path} is cut short ({path.stat().st_size} bytes; {detail}): an "
                                  f"interrupted save or copy; use another checkpoint (e.g. last.ckpt) or copy it "
                                  f"again") from None
        raise CheckpointError(f"cannot read checkpoint {path}: {detail}") from None
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hp, Mapping) or "model" not in hp or not isinstance(ckpt.get("state_dict"), Mapping):
        raise CheckpointError(f"{path} is not a fourm21 training checkpoint (no model config inside)")
    return ckpt


def _group(key: str) -> str:
    parts = key.split(".")
    depth = 3 if parts[0] in ("model", "criterion") else 2
    return ".".join(parts[:depth])


def _summary(keys: list[str]) -> str:
    groups = Counter(_group(k) for k in keys)
    shown = ", ".join(f"{g}: {n}" for g, n in groups.most_common(4))
    return f"{len(keys)} tensors ({shown}{', ...' if len(groups) > 4 else ''})"


def describe_mismatch(own: Mapping[str, torch.Tensor], state: Mapping[str, Any]) -> str | None:
    """How the tensors of a file (``state``) differ from a model's (``own``), in one line; None if they match."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state)
                    if hasattr(state[k], "shape") and tuple(own[k].shape) != tuple(state[k].shape))
    parts = []
    if missing:
        parts.append(f"missing {_summary(missing)}")
    if unexpected:
        parts.append(f"unexpected {_summary(unexpected)}")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} tensors of another shape (e.g. {k}: {tuple(state[k].shape)} in the file, "
                     f"{tuple(own[k].shape)} in the model)")
    return "; ".join(parts) or None


_UNUSED_BRANCH = re.compile(r"^(model\.|ema\.module\.)?(neck|fusion)\.")  # the network's neck / fusion tensors


def load_state(module: torch.nn.Module, state: Mapping[str, Any], source: str | Path, what: str = "") -> None:
    """``module.load_state_dict(state)``, or a CheckpointError naming ``source`` and the differences. A file from
    before image-level-only networks dropped their unused neck and fusion loads without those tensors."""
    own = module.state_dict()
    if not any(_UNUSED_BRANCH.search(k) for k in own):
        state = {k: v for k, v in state.items() if k in own or not _UNUSED_BRANCH.search(k)}
    detail = describe_mismatch(own, state)
    if detail:
        raise CheckpointError(f"{source} does not match the model built from {what or 'its config'}: {detail}")
    module.load_state_dict(state)


def architecture(model_cfg: Mapping[str, Any]) -> str:
    """``backbone convnext_atto, heads cls+det+inst+sem``: what a model config builds, for messages."""
    heads = [n for n, h in (model_cfg.get("heads") or {}).items() if h and h.get("enabled", True)]
    backbone = (model_cfg.get("backbone") or {}).get("name", "?")
    return f"backbone {backbone}, heads {'+'.join(heads) or 'none'}"


def inference_prefix(hparams: Mapping[str, Any]) -> str:
    """Where in a checkpoint's ``state_dict`` (and a ``MultiTaskModule``) the network used for inference
    lives: ``ema.module.`` (the moving average of the weights) when the run had ``ema.enabled``, else
    ``model.`` (the trained weights). The one place that decides: validation during training (hence
    best.ckpt), the report, ``fourm21-eval``, ``fourm21-predict``, ``fourm21.load`` and ``fourm21-export``
    all follow it."""
    return "ema.module." if (hparams.get("ema") or {}).get("enabled") else "model."


def load_checkpoint(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The network of a fourm21 ``.ckpt`` with its inference weights (``MultiTaskNet``, eval mode; the EMA
    under ``ema.enabled``, see ``inference_prefix``) and the checkpoint's hyper-parameters (``model``
    config, ``meta``: classes, image size ...)."""
    from fourm21.models.multitask import build_model

    ckpt = read_checkpoint(path)
    hp = dict(ckpt["hyper_parameters"])
    hp["meta"] = {k: v for k, v in (hp.get("meta") or {}).items() if k != DATA_CONFIG}  # exports copy meta
    try:
        net = build_model(hp["model"])
    except Exception as e:  # noqa: BLE001 - a config this version cannot build, whatever the cause
        raise CheckpointError(f"{path}: its model config cannot be built by this version of fourm21 "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    prefix = inference_prefix(hp)  # ema.enabled: the EMA weights
    state = {k.removeprefix(prefix): v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    load_state(net, state, path, f"its config ({architecture(hp['model'])})")
    return net.eval(), hp


_ABSENT = object()
_FIRST = ("name", "enabled", "num_classes", "weighting")  # the keys that tell architectures apart, shown first


def config_differences(saved: Any, wanted: Any, prefix: str) -> list[str]:
    """``key: A in the checkpoint, B in the config`` for every leaf that differs, the telling keys
    (``_FIRST``) first; a None in ``wanted`` (a value filled in from the data, e.g.
    ``model.heads.attr.groups``) matches anything."""
    def walk(a: Any, b: Any, key: str) -> list[str]:
        if b is None:
            return []
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            return [d for k in sorted(set(a) | set(b), key=str)
                    for d in walk(a.get(k, _ABSENT), b.get(k, _ABSENT), f"{key}.{k}")]
        if a != b:
            show = lambda v: "(absent)" if v is _ABSENT else repr(v)  # noqa: E731
            return [f"{key}: {show(a)} in the checkpoint, {show(b)} in the config"]
        return []
    diffs = walk(saved, wanted, prefix)
    return sorted(diffs, key=lambda d: d.split(":")[0].rsplit(".", 1)[-1] not in _FIRST)


def check_resume(path: str | Path, model_cfg: Mapping[str, Any], loss_cfg: Mapping[str, Any] | None = None) -> None:
    """Before ``fit(ckpt_path=...)``: the checkpoint reads and was trained with the same model (and loss) as the
    config; else a CheckpointError naming the keys that differ."""
    hp = read_checkpoint(path)["hyper_parameters"]
    diffs = config_differences(hp["model"], dict(model_cfg), "model")
    if loss_cfg is not None and hp.get("loss") is not None:
        diffs += config_differences(hp["loss"], dict(loss_cfg), "loss")
    if diffs:
        more = f" (+{len(diffs) - 4} more)" if len(diffs) > 4 else ""
        raise CheckpointError(f"cannot resume from {path}: it was trained with another model "
                              f"({architecture(hp['model'])}): {'; '.join(diffs[:4])}{more}; resume with the same "
                              f"model settings, or start a new run without ckpt_path")


def stored_data_config(path: str | Path) -> dict[str, Any] | None:
    """The data config a checkpoint was trained with (unresolved), or None for one written before
    fourm21 stored it. Reads only the hyper-parameters (memory-mapped load)."""
    stored = (read_checkpoint(path, mmap=True)["hyper_parameters"].get("meta") or {}).get(DATA_CONFIG)
    return dict(stored) if isinstance(stored, Mapping) else None


def check_data_matches(model_cfg: Mapping[str, Any], data_cfg: Mapping[str, Any], path: str | Path) -> None:
    """A checkpoint's heads have as many classes as ``data`` has labels, for every head the data sizes (its
    task's ``data_keys``)."""
    from fourm21.tasks import tasks_of_config

    heads = model_cfg.get("heads") or {}
    for head, task in tasks_of_config(model_cfg).items():
        for own, key in task.data_keys.items():
            have = data_cfg.get(key)
            if not isinstance(have, int) or have <= 0 or heads[head].get(own) == have:
                continue
            raise CheckpointError(f"{path} has {heads[head].get(own)} classes in its '{head}' head but data "
                                  f"'{data_cfg.get('name')}' has {have} (data.{key}); evaluate it on the data it "
                                  f"was trained on, or pick that data (data=...)")
