"""Image classification (softmax): the ``ClassificationHead``, cross-entropy, top-k decoding, accuracy / macro
P-R-F1 / confusion, the ``classification`` JSON entry, and the class count read from the data."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import open_dict

from fourm21.losses.classification import softmax_ce_loss
from fourm21.metrics.classification import ClassificationMetrics
from fourm21.models.heads.classification import ClassificationHead
from fourm21.tasks.base import Losses, Outputs, Pred, Task, pseudo_threshold
from fourm21.tasks.registry import register


class ClassificationTaskMetrics(ClassificationMetrics):
    """Accuracy and friends over the val images that carry a class label."""

    def add(self, preds: list[Pred], batch: dict) -> None:
        if "class_label" in preds[0]:
            has = batch["has_label"].cpu()
            pred = torch.stack([p["class_label"] for p in preds]).cpu()
            probs = torch.stack([p["class_probs"] for p in preds]).cpu()
            self.update(pred[has], batch["label"].cpu()[has], probs[has])


def class_name(names: list[str], k: int) -> str:
    return names[k] if k < len(names) else str(k)


@register
class ClassificationTask(Task):
    kind = "cls"
    head = ClassificationHead
    main_metric = "acc"
    data_keys = {"num_classes": "num_image_classes"}
    pipeline_tag, pipeline_rank = "image-classification", 3
    decoded_keys = ("cls_probs",)

    def settings(self, head: Any) -> dict[str, Any]:
        return {"topk": int(head.topk)}

    def loss(self, name: str, head: Any, outputs: Outputs, batch: dict[str, Any], cache: dict[str, Any]) -> Losses:
        has = batch["has_label"]
        if not has.any():
            return {}
        return {"ce": softmax_ce_loss(outputs[name]["logits"][has], batch["label"][has], head.label_smoothing)}

    def decode(self, name: str, outputs: Outputs, decoded: dict[str, torch.Tensor], image_size: tuple[int, int],
               settings: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return {"cls_probs": outputs[name]["logits"].float().softmax(-1)}

    def split(self, decoded: Mapping[str, torch.Tensor], preds: list[Pred], image_size: tuple[int, int],
              settings: Mapping[str, Any], shared: dict[str, Any]) -> None:
        """class_probs (K,), class_label, class_topk / class_topk_probs (the ``topk`` best)."""
        if "cls_probs" not in decoded:
            return
        probs = decoded["cls_probs"]
        top_p, top_i = probs.topk(min(int(settings["topk"]), probs.shape[-1]), dim=-1)
        for i, p in enumerate(preds):
            p.update(class_probs=probs[i], class_label=top_i[i, 0], class_topk=top_i[i], class_topk_probs=top_p[i])

    def pseudo_targets(self, name: str, outputs: Outputs, preds: list[Pred], batch: dict[str, Any],
                       threshold: float | None, stats: dict[str, float], cache: dict[str, Any]) -> None:
        """The top class where its probability >= ``threshold``."""
        probs = torch.stack([p["class_probs"] for p in preds])
        conf, label = probs.max(dim=1)
        batch["has_label"] = conf >= pseudo_threshold(threshold, name)
        batch["label"] = torch.where(batch["has_label"], label, torch.full_like(label, -1))
        stats[f"pseudo/{name}_frac"] = batch["has_label"].float().mean().item()

    def metrics(self, name: str, heads: list[Any], dataset: Any, tune: bool) -> ClassificationTaskMetrics:
        return ClassificationTaskMetrics(heads[0].num_classes)

    def image_entry(self, pred: Pred, meta: Mapping[str, Any]) -> dict[str, Any]:
        """``classification``: the top class, its score and the top-k list."""
        if "class_label" not in pred:
            return {}
        names = list(meta.get("image_class_names") or [])
        k = int(pred["class_label"])
        return {"classification": {
            "class_id": k, "class_name": class_name(names, k), "score": float(pred["class_probs"][k]),
            "top5": [{"class_id": int(c), "class_name": class_name(names, int(c)), "score": round(float(p), 5)}
                     for c, p in zip(pred["class_topk"], pred["class_topk_probs"])]}}

    def fill_from_data(self, cfg: Any, name: str, datamodule: Any) -> None:
        """``data.num_image_classes: null``: the training sets' image class names."""
        if cfg.data.get("num_image_classes", 0) is not None:
            return
        datamodule.setup("fit")
        names = next((ds.image_class_names for ds in datamodule.train_sets.values()
                      if getattr(ds, "image_class_names", None)), None)
        with open_dict(cfg):  # none named: 0, which switches the head off unless the command line enabled it
            cfg.data.num_image_classes = len(names or [])
