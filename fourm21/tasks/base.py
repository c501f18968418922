"""The task contract: one ``Task`` per task kind owns everything specific to that kind.

A task points to its head class (the network part, ``fourm21.models.heads``) and holds what the generic
machinery asks of it: the loss, the decoder and per-image split (traceable, as the end-to-end graph is
traced from them), the mapping back to original pixels, the metrics and report keys, the JSON / COCO
entries, the pseudo-targets, the class counts it fills from the data and its config checks. Backbone, neck,
collation, runners, the evaluator, the training loop and the CLIs loop over the enabled tasks
(``fourm21.tasks.registry``) and never name one. Every hook has a do-nothing default, so a small task
(an image-level regression) writes only the hooks it needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from fourm21.errors import ConfigError, check_number
from fourm21.models.heads.base import Head

Outputs = Mapping[str, Mapping[str, torch.Tensor]]
Losses = dict[str, torch.Tensor]
Pred = dict[str, torch.Tensor]


class ConfigKeys:
    """Attribute access to a head's config keys, so ``Task.settings`` reads a config as it reads a built head."""

    def __init__(self, cfg: Mapping[str, Any], where: str = "model.heads") -> None:
        self._cfg, self._where = cfg, where

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        if key not in self._cfg:
            raise ConfigError(f"{self._where}: the head config lacks '{key}', which decoding needs")
        return self._cfg[key]


class Task:
    """One task kind. Subclass it, set ``kind`` and ``head``, override the hooks the kind needs and decorate
    the class with ``fourm21.tasks.registry.register``; its config entry under ``model.heads`` names the head
    class (``_target_``), which is how the machinery finds the task."""

    kind: ClassVar[str] = ""                   # short name shown in messages, model cards and DecodeSettings.heads
    head: ClassVar[type[Head]]                 # the head class its config entry builds
    requires: ClassVar[tuple[str, ...]] = ()   # kinds whose outputs or loss cache it reads (they run first)
    main_metric: ClassVar[str | None] = None   # its report key (``<name>/<metric>``) in the selection score
    coco_iou_type: ClassVar[str | None] = None  # 'bbox' / 'segm': COCOeval scores it on the data set's COCO gt
    data_keys: ClassVar[dict[str, str]] = {}   # head config key -> the data key that sizes it (checkpoint vs data)
    pipeline_tag: ClassVar[str | None] = None  # the Hugging Face pipeline tag of a model card
    pipeline_rank: ClassVar[int] = 100         # lower ranks name a model card's pipeline first
    overrides: ClassVar[dict[str, str]] = {}   # predict/serve/eval key -> the decode setting it replaces
    decoded_keys: ClassVar[tuple[str, ...]] = ()  # decode()'s batch-level outputs: the end-to-end graph's outputs
    flat_keys: ClassVar[tuple[str, ...]] = ()  # those of them flat over the batch's detections (not (B, ...))
    detection_keys: ClassVar[tuple[str, ...]] = ()  # its per-image prediction entries with one row per detection

    # --- decoding ---------------------------------------------------------------------------------------
    def settings(self, head: Any) -> dict[str, Any]:
        """What decoding reads from a built head (or a ``ConfigKeys`` of its config): thresholds, top-k ..."""
        return {}

    def saved_settings(self, head_cfg: Mapping[str, Any], saved: Mapping[str, Any], meta: Mapping[str, Any]
                       ) -> dict[str, Any]:
        """The settings of an exported head: its config's, then the values the export saved (tuned ones)."""
        values = self.settings(ConfigKeys(head_cfg))
        values.update(saved)
        return values

    def check_override(self, key: str, value: Any) -> Any:
        """A user's value for one of ``overrides``, checked (ConfigError naming the key) and converted."""
        return value

    def decode(self, name: str, outputs: Outputs, decoded: dict[str, torch.Tensor], image_size: tuple[int, int],
               settings: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Raw outputs of head ``name`` -> batch-level predictions (``decoded_keys``); traceable."""
        return {}

    def split(self, decoded: Mapping[str, torch.Tensor], preds: list[Pred], image_size: tuple[int, int],
              settings: Mapping[str, Any], shared: dict[str, Any]) -> None:
        """Add this task's per-image predictions to ``preds`` (one dict per image), from ``decoded``."""

    def to_original(self, pred: Pred, out: Pred, orig_size: tuple[int, int], scale: float,
                    settings: Mapping[str, Any]) -> None:
        """Write this task's entries of ``pred`` (on the letterboxed input) into ``out`` in original pixels."""

    # --- training ---------------------------------------------------------------------------------------
    def loss(self, name: str, head: Any, outputs: Outputs, batch: dict[str, Any], cache: dict[str, Any]) -> Losses:
        """Named scalar losses over the samples that carry this task's target; {} when none does."""
        return {}

    def pseudo_targets(self, name: str, outputs: Outputs, preds: list[Pred], batch: dict[str, Any],
                       threshold: float | None, stats: dict[str, float], cache: dict[str, Any]) -> None:
        """Write the teacher's confident predictions into ``batch`` as this task's targets (and task mask);
        ``threshold``: ``semi.thresholds.<name>``; ``cache`` passes work to the tasks that require this one."""

    # --- evaluation -------------------------------------------------------------------------------------
    def metrics(self, name: str, heads: list[Any], dataset: Any, tune: bool) -> Any | None:
        """This task's metrics over a val set (``add(preds, batch)``, ``compute() -> {key: value}`` with keys
        relative to the head name, ``reset()``), or None when the set cannot score it. ``heads``: the head in
        every network that is scored or kept (a tuned threshold goes into all of them)."""
        return None

    def tunes_on_validation(self, head_cfg: Mapping[str, Any]) -> bool:
        """Whether fit's validation tunes something the checkpoint keeps (the multi-label thresholds): then a
        run validates in fit even when the report's evaluation follows on the same split."""
        return False

    def coco_params(self, settings: Mapping[str, Any], dataset: Any) -> dict[str, Any] | None:
        """COCOeval ``params`` attributes this task sets (keypoint sigmas ...) for a task with a
        ``coco_iou_type``; None when ``dataset`` cannot score it (its ground truth lacks the task's labels)."""
        return {}

    # --- output -----------------------------------------------------------------------------------------
    def image_entry(self, pred: Pred, meta: Mapping[str, Any]) -> dict[str, Any]:
        """This task's fields of an image's JSON entry (predict, serve): ``{"classification": {...}}`` ..."""
        return {}

    def annotations(self, pred: Pred, entries: list[dict[str, Any]], meta: Mapping[str, Any], masks: bool,
                    digits: int | None) -> list[dict[str, Any]]:
        """The per-object entries (COCO results / predictions.json annotations) with this task's part added
        (``masks``: with masks where the task has them; ``digits``: scores rounded, None = exact)."""
        return entries

    def caption_lines(self, pred: Pred, meta: Mapping[str, Any]) -> list[str]:
        """Lines this task adds to an overlay's caption."""
        return []

    def draw(self, canvas: np.ndarray, pred: Pred, keep: torch.Tensor, zoom: float, colours: list[tuple[int, int, int]],
             settings: Mapping[str, Any]) -> None:
        """Draw this task's part of ``pred`` (original pixels times ``zoom``) on the uint8 RGB ``canvas`` in place:
        ``keep`` selects the detections shown, ``colours`` gives each of them its colour (class or track)."""

    # --- config and data --------------------------------------------------------------------------------
    def fill_from_data(self, cfg: Any, name: str, datamodule: Any) -> None:
        """Fill the sizes the config leaves to the data (``null``) from the training sets, in place."""

    def check_config(self, cfg: Any, name: str, head_cfg: Any) -> None:
        """ConfigError naming the key for a setting of this head that cannot work (before any work starts).
        The default checks the sizes the data gives (``data_keys``); a task that overrides it calls it too."""
        data = cfg.get("data")
        for own, key in self.data_keys.items():
            if head_cfg.get(own) is None and data is not None and data.get(key, 0) is None:
                continue  # null on both sides: read from the training data (``fill_from_data``)
            if own not in head_cfg:
                continue
            check_number(head_cfg[own], f"model.heads.{name}.{own}", integer=True)
            if head_cfg[own] < 1:
                data_name = data.get("name") if data is not None else None
                raise ConfigError(f"model.heads.{name}.{own} is {head_cfg[own]}: data '{data_name}' has no labels for "
                                  f"this head; disable it (model.heads.{name}.enabled=false) or pick an experiment "
                                  f"made for this data (e.g. experiment={data_name})")

    def text_buckets(self, head_cfg: Mapping[str, Any]) -> int | None:
        """The hash buckets of caption tokens when this head reads captions, else None."""
        return None


def pseudo_threshold(threshold: float | None, name: str) -> float:
    """``semi.thresholds.<name>``, or a ConfigError naming the key when the config lacks it."""
    if threshold is None:
        raise ConfigError(f"semi.thresholds.{name} is missing: the confidence at which the teacher's predictions for "
                          f"head '{name}' become targets")
    return float(threshold)
