"""Multi-attribute classification: the ``AttributeHead`` (one softmax per group), one cross-entropy per group
over the images where it is known, accuracy / macro F1 per group, the ``attributes`` JSON entry, and the
groups read from the training CSV."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import open_dict
from torch.nn import functional as F

from fourm21.errors import ConfigError
from fourm21.metrics.image_labels import AttributeMetrics
from fourm21.models.heads.attributes import AttributeHead
from fourm21.tasks.base import Losses, Outputs, Pred, Task, pseudo_threshold
from fourm21.tasks.registry import register

PREFIX = "attr."  # per-image prediction keys: attr.<group>.probs / attr.<group>.label


class AttributeTaskMetrics(AttributeMetrics):
    """Accuracy and macro F1 per group; keys ``.<group>/acc`` (joined to the head name) and the means."""

    def add(self, preds: list[Pred], batch: dict) -> None:
        if not batch["has_attributes"].any():
            return
        has = batch["has_attributes"].cpu()
        for g, target in batch["attributes"].items():
            if f"{PREFIX}{g}.label" in preds[0]:
                self.update(g, torch.stack([p[f"{PREFIX}{g}.label"] for p in preds]).cpu()[has], target.cpu()[has])


@register
class AttributeTask(Task):
    kind = "attr"
    head = AttributeHead
    main_metric = "acc_mean"
    pipeline_tag, pipeline_rank = "image-classification", 4

    def loss(self, name: str, head: Any, outputs: Outputs, batch: dict[str, Any], cache: dict[str, Any]) -> Losses:
        """One cross-entropy per attribute group, over the images where that attribute is known."""
        raw = outputs[name]
        parts = {}
        for g in head.groups:
            target = batch["attributes"].get(g)
            if target is None:
                continue
            known = (target >= 0) & batch["has_attributes"]
            if known.any():
                parts[g] = F.cross_entropy(raw[g][known].float(), target[known], label_smoothing=head.label_smoothing)
        return parts

    def decode(self, name: str, outputs: Outputs, decoded: dict[str, torch.Tensor], image_size: tuple[int, int],
               settings: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return {f"{PREFIX}{group}.probs": logits.float().softmax(-1) for group, logits in outputs[name].items()}

    def split(self, decoded: Mapping[str, torch.Tensor], preds: list[Pred], image_size: tuple[int, int],
              settings: Mapping[str, Any], shared: dict[str, Any]) -> None:
        """attr.<group>.probs (K_group,) and attr.<group>.label per image."""
        for key, probs in decoded.items():
            if key.startswith(PREFIX):
                group = key[len(PREFIX):-len(".probs")]
                for i, p in enumerate(preds):
                    p[f"{PREFIX}{group}.probs"] = probs[i]
                    p[f"{PREFIX}{group}.label"] = probs[i].argmax()

    def pseudo_targets(self, name: str, outputs: Outputs, preds: list[Pred], batch: dict[str, Any],
                       threshold: float | None, stats: dict[str, float], cache: dict[str, Any]) -> None:
        """Per group the top value where its probability >= ``threshold`` (else missing)."""
        thr = pseudo_threshold(threshold, name)
        attributes = {}
        for g, logits in outputs[name].items():
            conf, label = logits.float().softmax(-1).max(-1)
            attributes[g] = torch.where(conf >= thr, label, torch.full_like(label, -1))
        batch["attributes"] = attributes
        batch["has_attributes"] = torch.ones(batch["image"].shape[0], dtype=torch.bool, device=batch["image"].device)

    def metrics(self, name: str, heads: list[Any], dataset: Any, tune: bool) -> AttributeTaskMetrics | None:
        return AttributeTaskMetrics(heads[0].groups) if heads[0].groups else None

    def image_entry(self, pred: Pred, meta: Mapping[str, Any]) -> dict[str, Any]:
        """``attributes``: {group: {value, score}}."""
        groups = sorted({k.split(".")[1] for k in pred if k.startswith(PREFIX)})
        if not groups:
            return {}
        classes = meta.get("attribute_classes")
        names = dict(classes) if isinstance(classes, Mapping) else {}
        out = {}
        for g in groups:
            k = int(pred[f"{PREFIX}{g}.label"])
            values = names.get(g, [])
            out[g] = {"value": values[k] if k < len(values) else k,
                      "score": round(float(pred[f"{PREFIX}{g}.probs"][k]), 5)}
        return {"attributes": out}

    def caption_lines(self, pred: Pred, meta: Mapping[str, Any]) -> list[str]:
        return [f"{g}: {v['value']} {v['score']:.2f}" for g, v in self.image_entry(pred, meta).get("attributes",
                                                                                                   {}).items()]

    def fill_from_data(self, cfg: Any, name: str, datamodule: Any) -> None:
        """``model.heads.<name>.groups`` / ``data.groups: null``: the attribute columns of the training CSV."""
        head_cfg = cfg.model.heads[name]
        if head_cfg.get("groups") and cfg.data.get("groups", 0) is not None:
            return
        datamodule.setup("fit")
        classes = next((ds.attribute_classes for ds in datamodule.train_sets.values()
                        if getattr(ds, "attribute_classes", None)), None)
        if classes is None:
            raise ConfigError(f"model.heads.{name} is enabled but no training data set carries attributes")
        with open_dict(cfg):
            if not head_cfg.get("groups"):
                head_cfg.groups = {g: len(c) for g, c in classes.items()}
            if cfg.data.get("groups", 0) is None:
                cfg.data.groups = list(classes)

    def check_config(self, cfg: Any, name: str, head_cfg: Any) -> None:
        if not head_cfg.get("groups") and "groups" not in (cfg.get("data") or {}):
            data_name = cfg.data.get("name") if cfg.get("data") is not None else None
            raise ConfigError(f"model.heads.{name} is enabled but data '{data_name}' has no attribute columns "
                              f"(data.groups); disable it (model.heads.{name}.enabled=false) or use "
                              f"experiment=attributes")
