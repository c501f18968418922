"""The registry of task kinds and the loops that run every enabled task: a head (or its config entry)
finds its task through its class, so the machinery never names a kind."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hydra.utils import get_class

from fourm21.errors import ConfigError
from fourm21.tasks.base import Losses, Outputs, Task

_BY_HEAD: dict[type, Task] = {}


def register(cls: type[Task]) -> type[Task]:
    """Class decorator: make ``cls`` the task of its ``head`` class (one task per head class)."""
    if not cls.kind or not isinstance(getattr(cls, "head", None), type):
        raise TypeError(f"{cls.__name__}: a task sets kind and head")
    _BY_HEAD[cls.head] = cls()
    return cls


def registered() -> dict[str, Task]:
    """Every registered task by kind."""
    return {t.kind: t for t in _BY_HEAD.values()}


def task_for_class(head_cls: type, name: str) -> Task:
    """The task of head class ``head_cls`` (built for ``model.heads.<name>``); a ConfigError when it has none."""
    for cls in head_cls.__mro__:
        if cls in _BY_HEAD:
            return _BY_HEAD[cls]
    raise ConfigError(f"model.heads.{name}._target_: {head_cls.__module__}.{head_cls.__qualname__} has no task "
                      f"(register one with fourm21.tasks.register; known kinds: {', '.join(sorted(registered()))})")


def enabled_entries(model_cfg: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """``model.heads`` entries that are enabled, by name."""
    return {name: h for name, h in (model_cfg.get("heads") or {}).items() if h and h.get("enabled", True)}


def task_for_config(name: str, head_cfg: Mapping[str, Any]) -> Task:
    """The task of a ``model.heads.<name>`` entry (its ``_target_`` class is imported, which registers a task
    defined beside it)."""
    if "_target_" not in head_cfg:
        raise ConfigError(f"model.heads.{name}: missing '_target_' (the head class to build)")
    try:
        head_cls = get_class(str(head_cfg["_target_"]))
    except Exception as e:  # hydra wraps import errors; name the key instead
        raise ConfigError(f"model.heads.{name}._target_: cannot import '{head_cfg['_target_']}' ({e})") from None
    return task_for_class(head_cls, name)


def in_order(tasks: Mapping[str, Task]) -> dict[str, Task]:
    """``{name: task}`` with every task after the tasks it ``requires``; a ConfigError when one is missing."""
    by_kind = {t.kind: n for n, t in tasks.items()}
    order: dict[str, Task] = {}

    def visit(name: str) -> None:
        if name in order:
            return
        for kind in tasks[name].requires:
            if kind not in by_kind:
                raise ConfigError(f"model.heads.{name} needs a '{kind}' head, which is disabled")
            visit(by_kind[kind])
        order[name] = tasks[name]

    for name in tasks:
        visit(name)
    return order


def tasks_of(heads: Mapping[str, Any]) -> dict[str, Task]:
    """``{name: task}`` of a network's heads (``net.heads``), dependencies first."""
    return in_order({name: task_for_class(type(head), name) for name, head in heads.items()})


def tasks_of_config(model_cfg: Mapping[str, Any]) -> dict[str, Task]:
    """``{name: task}`` of a ``model`` config's enabled heads, dependencies first."""
    return in_order({name: task_for_config(name, h) for name, h in enabled_entries(model_cfg).items()})


def head_losses(net: Any, outputs: Outputs, batch: dict[str, Any]) -> dict[str, Losses]:
    """{task: {part: scalar}} of every head of ``net``, each after those it requires, sharing one cache (work
    one task's loss hands to another's); a task none of the batch's samples carries is absent."""
    cache: dict[str, Any] = {}
    losses = {}
    for name, task in tasks_of(net.heads).items():
        parts = task.loss(name, net.heads[name], outputs, batch, cache)
        if parts:
            losses[name] = parts
    return losses


def override_keys() -> list[str]:
    """Every decode key a registered task lets users set (``Task.overrides``: ``score_thr``, ``max_det`` ...)."""
    return list(dict.fromkeys(k for task in _BY_HEAD.values() for k in task.overrides))


def override_values(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The decode settings a CLI config sets (its non-null keys among ``override_keys``), each checked by the
    task that takes it (a ConfigError names the key)."""
    out: dict[str, Any] = {}
    for task in _BY_HEAD.values():
        for key in task.overrides:
            value = cfg.get(key)
            if value is not None and key not in out:
                out[key] = task.check_override(key, value)
    return out
