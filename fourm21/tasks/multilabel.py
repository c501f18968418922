"""Multi-label classification (sigmoid per class, optionally fused with a caption): the ``MultiLabelHead``,
binary cross-entropy, decision thresholds tuned on val while fitting (saved in the head, hence the checkpoint
and exports), micro/macro/samples F1 and mAP, the ``labels`` JSON entry, and the class ids read from the CSV."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import open_dict
from torch.nn import functional as F

from fourm21.errors import ConfigError
from fourm21.metrics.image_labels import MultiLabelMetrics
from fourm21.models.heads.multilabel import MultiLabelHead
from fourm21.tasks.base import ConfigKeys, Losses, Outputs, Pred, Task, pseudo_threshold
from fourm21.tasks.registry import register


class MultiLabelTaskMetrics(MultiLabelMetrics):
    """F1s and mAP at the head's thresholds; with tuning, the tuned thresholds go into every head given."""

    def __init__(self, heads: list[Any], tune: str) -> None:
        super().__init__(heads[0].num_classes, tune)
        self.heads = heads

    def add(self, preds: list[Pred], batch: dict) -> None:
        if "label_probs" in preds[0]:
            has = batch["has_labels"].cpu()
            self.update(torch.stack([p["label_probs"] for p in preds]).cpu()[has], batch["labels"].cpu()[has])

    def compute(self, current: torch.Tensor | None = None) -> dict[str, float]:
        if self.tune == "none":  # scored at the thresholds the network holds
            self.thresholds = self.heads[0].thresholds.detach().cpu().clone()
        out = super().compute(current)
        if self.tune != "none" and self.count:
            for head in self.heads:  # the trained network and its EMA alike, so the average keeps them
                head.thresholds.copy_(self.thresholds.to(head.thresholds.device))
        return out


@register
class MultiLabelTask(Task):
    kind = "mlc"
    head = MultiLabelHead
    main_metric = "f1_micro"
    data_keys = {"num_classes": "num_labels"}
    pipeline_tag, pipeline_rank = "image-classification", 5
    decoded_keys = ("mlc_probs",)

    def settings(self, head: Any) -> dict[str, Any]:
        if isinstance(head, ConfigKeys):  # an exported head: the config's starting value for every class
            return {"thresholds": torch.full((int(head.num_classes),), float(head.threshold))}
        return {"thresholds": head.thresholds.detach().float().cpu()}

    def saved_settings(self, head_cfg: Mapping[str, Any], saved: Mapping[str, Any], meta: Mapping[str, Any]
                       ) -> dict[str, Any]:
        values = self.settings(ConfigKeys(head_cfg))
        tuned = saved.get("thresholds", meta.get("mlc_thresholds"))  # the latter: exports of older versions
        if tuned is not None:
            values["thresholds"] = torch.as_tensor(tuned, dtype=torch.float32)
        return values

    def loss(self, name: str, head: Any, outputs: Outputs, batch: dict[str, Any], cache: dict[str, Any]) -> Losses:
        has = batch["has_labels"]
        if not has.any():
            return {}
        logits = outputs[name]["logits"][has].float()
        return {"bce": F.binary_cross_entropy_with_logits(logits, batch["labels"][has].float())}

    def decode(self, name: str, outputs: Outputs, decoded: dict[str, torch.Tensor], image_size: tuple[int, int],
               settings: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return {"mlc_probs": outputs[name]["logits"].float().sigmoid()}

    def split(self, decoded: Mapping[str, torch.Tensor], preds: list[Pred], image_size: tuple[int, int],
              settings: Mapping[str, Any], shared: dict[str, Any]) -> None:
        """label_probs (C,) and label_set (C,) bool: the classes above their thresholds."""
        if "mlc_probs" not in decoded:
            return
        probs = decoded["mlc_probs"]
        chosen = probs > settings["thresholds"].to(probs.device)
        for i, p in enumerate(preds):
            p.update(label_probs=probs[i], label_set=chosen[i])

    def pseudo_targets(self, name: str, outputs: Outputs, preds: list[Pred], batch: dict[str, Any],
                       threshold: float | None, stats: dict[str, float], cache: dict[str, Any]) -> None:
        """The label set where every class is confidently in or out (p >= thr or p <= 1 - thr)."""
        thr = pseudo_threshold(threshold, name)
        probs = outputs[name]["logits"].float().sigmoid()
        batch["labels"] = (probs >= 0.5).float()
        batch["has_labels"] = ((probs >= thr) | (probs <= 1 - thr)).all(dim=1)
        stats[f"pseudo/{name}_frac"] = batch["has_labels"].float().mean().item()

    def tunes_on_validation(self, head_cfg: Mapping[str, Any]) -> bool:
        return head_cfg["tune"] != "none"

    def metrics(self, name: str, heads: list[Any], dataset: Any, tune: bool) -> MultiLabelTaskMetrics | None:
        if not heads[0].num_classes:
            return None
        return MultiLabelTaskMetrics(heads, heads[0].tune if tune else "none")

    def image_entry(self, pred: Pred, meta: Mapping[str, Any]) -> dict[str, Any]:
        """``labels``: [{id, name, score}] of the classes above their thresholds."""
        if "label_set" not in pred:
            return {}
        names = list(meta.get("label_names") or [])
        return {"labels": [{"id": int(names[i]) if i < len(names) and names[i].isdigit() else i,
                            "name": names[i] if i < len(names) else str(i),
                            "score": round(float(pred["label_probs"][i]), 5)}
                           for i in pred["label_set"].nonzero().flatten().tolist()]}

    def caption_lines(self, pred: Pred, meta: Mapping[str, Any]) -> list[str]:
        entry = self.image_entry(pred, meta)
        if "labels" not in entry:
            return []
        return ["labels: " + (", ".join(f"{x['name']} {x['score']:.2f}" for x in entry["labels"]) or "none")]

    def text_buckets(self, head_cfg: Mapping[str, Any]) -> int | None:
        return int(head_cfg["text"]["num_buckets"])

    def fill_from_data(self, cfg: Any, name: str, datamodule: Any) -> None:
        """``data.num_labels`` / ``data.class_ids: null``: the class ids of the training CSV."""
        if "num_labels" not in cfg.data:
            return
        datamodule.setup("fit")
        ids = next((list(ds.class_ids) for ds in datamodule.train_sets.values() if getattr(ds, "class_ids", None)),
                   None)
        if ids is None:
            raise ConfigError(f"model.heads.{name} is enabled but no training data set carries multi-label class ids")
        if cfg.data.num_labels is not None and cfg.data.num_labels != len(ids):
            raise ConfigError(f"data.num_labels: {cfg.data.num_labels}, but the training data has {len(ids)} "
                              f"class ids {ids}; set data.num_labels={len(ids)} or leave it out (null)")
        with open_dict(cfg):
            cfg.data.num_labels = len(ids)
            if cfg.data.get("class_ids") is None:
                cfg.data.class_ids = ids
