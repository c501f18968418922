"""The one path from raw outputs to predictions: every head's task decodes its own output.

``decode_batch`` is batched and traceable (the end-to-end ONNX graph is traced from it); it returns the
whole batch's detections as one flat list with an image index, as exported detectors do, and the
image-level outputs as (B, ...) tensors. ``split_images`` turns that into one dict per image (masks
pasted at the input size); ``decode`` is the two together, what validation, predict, the API and every
runner call. Settings (thresholds, ``max_det`` ...) come in a ``DecodeSettings``, read from a network's
heads or, for an exported graph, from the export's config: no network is needed to decode.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from fourm21.tasks import Task, task_for_config, tasks_of
from fourm21.tasks.registry import enabled_entries, in_order

Outputs = Mapping[str, Mapping[str, torch.Tensor]]


@dataclass(frozen=True, eq=False)
class DecodeSettings:
    """Everything decoding reads besides the raw outputs: the tasks of the model's heads (``{name: Task}``,
    dependencies first) and each head's settings (``values[name]``: thresholds, top-k, the multi-label
    head's tuned thresholds ...)."""

    tasks: dict[str, Task]
    values: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DecodeSettings) or self.heads != other.heads:
            return False
        same = lambda a, b: torch.equal(torch.as_tensor(a), torch.as_tensor(b)) \
            if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor) else a == b  # noqa: E731
        mine, theirs = self.values, other.values
        return all(set(mine.get(n, {})) == set(theirs.get(n, {})) and all(
            same(v, theirs[n][k]) for k, v in mine.get(n, {}).items()) for n in self.tasks)

    @property
    def heads(self) -> dict[str, str]:
        """``{name: kind}`` of the heads."""
        return {name: task.kind for name, task in self.tasks.items()}

    def of(self, name: str) -> dict[str, Any]:
        return self.values.get(name, {})

    def with_overrides(self, **values: Any) -> DecodeSettings:
        """A copy with the non-None ``values`` (``score_thr=0.3`` ...) given to every head whose task takes that
        key (``Task.overrides``), each checked by its task; keys no head takes are ignored."""
        new = {name: dict(v) for name, v in self.values.items()}
        for key, value in values.items():
            if value is None:
                continue
            for name, task in self.tasks.items():
                if key in task.overrides:
                    new.setdefault(name, {})[task.overrides[key]] = task.check_override(key, value)
        return DecodeSettings(self.tasks, new)

    def saved(self) -> dict[str, dict[str, Any]]:
        """The values as plain lists and numbers, for an export's config (``from_config(..., saved=)``)."""
        def plain(v: Any) -> Any:
            return v.tolist() if isinstance(v, torch.Tensor) else list(v) if isinstance(v, tuple) else v
        return {name: {k: plain(v) for k, v in values.items()} for name, values in self.values.items() if values}

    @classmethod
    def from_net(cls, net: Any) -> DecodeSettings:
        """The settings the network's heads hold (and the tuned multi-label thresholds)."""
        return cls.from_heads(net.heads)

    @classmethod
    def from_heads(cls, heads: Mapping[str, Any]) -> DecodeSettings:
        """The settings of ``{output key: head}`` (heads alone, e.g. in a test)."""
        tasks = tasks_of(heads)
        return cls(tasks, {name: task.settings(heads[name]) for name, task in tasks.items()})

    @classmethod
    def from_config(cls, model_cfg: Mapping[str, Any], saved: Mapping[str, Any] | None = None,
                    meta: Mapping[str, Any] | None = None) -> DecodeSettings:
        """The settings of an exported model, from its ``model`` config and the values its export saved
        (``saved``: ``{name: {key: value}}``; ``meta``: the export's meta, for older exports' keys)."""
        entries = enabled_entries(model_cfg)
        tasks = in_order({name: task_for_config(name, h) for name, h in entries.items()})
        values = {name: task.saved_settings(entries[name], dict((saved or {}).get(name) or {}), meta or {})
                  for name, task in tasks.items()}
        return cls(tasks, values)


def decode_batch(outputs: Outputs, image_size: tuple[int, int], s: DecodeSettings) -> dict[str, torch.Tensor]:
    """Every head's raw output -> batch-level predictions (each task's ``decoded_keys``: the flat ``det_*``
    detections and their ``det_mask_logits``, ``cls_probs`` (B, K), ``sem_labels`` (B, H, W) ...)."""
    out: dict[str, torch.Tensor] = {}
    for name, task in s.tasks.items():
        if name in outputs:
            out.update(task.decode(name, outputs, out, image_size, s.of(name)))
    return out


def batch_size_of(outputs: Outputs) -> int:
    """The batch size of raw outputs (every head's tensors are (B, ...) except the anchor points)."""
    return next(iter(next(iter(outputs.values())).values())).shape[0]


def split_images(decoded: Mapping[str, torch.Tensor], batch: int, image_size: tuple[int, int],
                 s: DecodeSettings) -> list[dict[str, torch.Tensor]]:
    """``decode_batch``'s output -> one dict per image, each task adding its entries: boxes (N, 4), scores,
    labels, locations, mask_logits (N, Hp, Wp) and masks (N, H, W) bool at the input size, class_probs /
    class_label / class_topk / class_topk_probs, semantic (H, W), attr.<group>.probs / .label, label_probs /
    label_set — whichever heads the model has."""
    preds: list[dict[str, torch.Tensor]] = [{} for _ in range(batch)]
    shared: dict[str, Any] = {}
    for name, task in s.tasks.items():
        task.split(decoded, preds, image_size, s.of(name), shared)
    return preds


@torch.no_grad()
def decode(outputs: Outputs, image_size: tuple[int, int], s: DecodeSettings) -> list[dict[str, torch.Tensor]]:
    """Raw outputs -> one dict of predictions per image, on the network input (see ``split_images``)."""
    return split_images(decode_batch(outputs, image_size, s), batch_size_of(outputs), image_size, s)
