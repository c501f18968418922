"""Collects every head's predictions over a data set and computes the flat ``task/metric`` dict.

Each task's metrics read their own fields of the decoded predictions and the batch (``add``, in
``classification.py``, ``segmentation.py``, ``image_labels.py``, keyed by head name here); the
evaluator keeps only the COCO results of ``det`` / ``inst``. Under DDP each process sees a shard of the
val set; ``compute`` first syncs: torchmetrics' own sync for every torchmetrics state (counts summed,
multi-label scores concatenated), and the COCO results, which torchmetrics has no state for, gathered
per image id, so COCOeval scores the whole set at once and every process returns the numbers a
single-process run would.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torchmetrics import Metric

from fourm21.metrics.classification import ClassificationMetrics
from fourm21.metrics.coco import coco_evaluate, predictions_to_coco, results_for
from fourm21.metrics.image_labels import AttributeMetrics, MultiLabelMetrics
from fourm21.metrics.segmentation import SegmentationMetrics

# The metric each task contributes to the single model-selection score ``score``.
MAIN_METRICS = {"cls": "acc", "det": "map", "inst": "map", "sem": "miou", "attr": "acc_mean", "mlc": "f1_micro"}
COCO_TASKS = {"det": "bbox", "inst": "segm"}


def world_size() -> int:
    """Processes in the default ``torch.distributed`` group; 1 when it is not initialised."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _torchmetrics(obj: Any, prefix: str = "") -> list[tuple[str, Metric]]:
    """The torchmetrics ``Metric`` objects a metrics helper holds (in attributes, dicts, tuples), by path."""
    found: list[tuple[str, Metric]] = []
    items = vars(obj).items() if not isinstance(obj, (dict, list, tuple)) else (
        obj.items() if isinstance(obj, dict) else enumerate(obj))
    for key, value in items:
        if isinstance(value, Metric):
            found.append((f"{prefix}{key}", value))
        elif isinstance(value, (dict, list, tuple)):
            found.extend(_torchmetrics(value, f"{prefix}{key}."))
    return found


class MultiTaskEvaluator:
    """``update`` per batch with decoded predictions; ``compute`` returns e.g. ``{"cls/acc": ..., "det/map50": ...}``.

    ``dataset`` is the evaluation data set: its ``coco`` ground truth (if any) is used by COCOeval,
    its ``cat_ids`` map contiguous labels back to the data set's category ids. Only tasks whose
    targets the data set carries produce metrics. ``to_original(pred, meta)`` maps one image's
    prediction on the network input to its original pixels for COCOeval (the engine passes
    ``fourm21.inference.letterbox.unletterbox``; by default predictions already are in original pixels).
    """

    def __init__(self, tasks: list[str], dataset: Any, num_image_classes: int = 0, num_sem_classes: int = 0,
                 attribute_groups: dict[str, int] | None = None, num_labels: int = 0,
                 threshold_tuning: str = "per_class",
                 to_original: Callable[[dict[str, torch.Tensor], dict], dict[str, torch.Tensor]] | None = None
                 ) -> None:
        self.tasks = list(tasks)
        self.coco_gt = getattr(dataset, "coco", None)
        self.cat_ids = list(getattr(dataset, "cat_ids", []))
        self.to_original = to_original
        self.cls = ClassificationMetrics(num_image_classes) if "cls" in tasks and num_image_classes else None
        self.sem = SegmentationMetrics(num_sem_classes) if "sem" in tasks and num_sem_classes else None
        self.attr = AttributeMetrics(attribute_groups) if "attr" in tasks and attribute_groups else None
        self.mlc = MultiLabelMetrics(num_labels, threshold_tuning) if "mlc" in tasks and num_labels else None
        self.coco_evals: dict[str, Any] = {}
        # task -> its metrics (each with add / compute / reset); their torchmetrics sync only in ``gather``
        self.parts = {task: part for task, part in (("cls", self.cls), ("sem", self.sem), ("attr", self.attr),
                                                     ("mlc", self.mlc)) if part is not None}
        self._metrics = [m for part in self.parts.values() for _, m in _torchmetrics(part)]
        self.reset()

    def reset(self) -> None:
        self.coco_results: dict[int, list[dict]] = {}  # image id -> its COCO results entries
        self.coco_evals = {}
        self.gathered = False
        for part in self.parts.values():
            part.reset()

    @property
    def image_ids(self) -> list[int]:
        """The images COCOeval scores (each once, in the order first seen)."""
        return list(self.coco_results)

    @property
    def results(self) -> list[dict]:
        """COCO results entries of every scored image."""
        return [r for rs in self.coco_results.values() for r in rs]

    def update(self, preds: list[dict[str, torch.Tensor]], batch: dict[str, Any]) -> None:
        if self.gathered:
            raise RuntimeError("MultiTaskEvaluator.update after compute() gathered the processes' results; "
                               "call reset() first")
        for part in self.parts.values():
            part.add(preds, batch)
        if self.coco_gt is not None and ("det" in self.tasks or "inst" in self.tasks):
            has = batch["has_boxes"].cpu()
            for p, meta, h in zip(preds, batch["meta"], has):
                if h and meta["image_id"] not in self.coco_results:  # an image seen twice is scored once
                    if self.to_original is not None and len(p.get("boxes", ())):
                        p = self.to_original({k: v for k, v in p.items() if k != "semantic"}, meta)
                    self.coco_results[meta["image_id"]] = predictions_to_coco(p, meta["image_id"], self.cat_ids)

    def gather(self) -> None:
        """Under DDP: every process's state joins every other's (a collective call: all processes, same order).

        Every torchmetrics state is synced by torchmetrics itself (``Metric.sync``: each state reduced by
        its own rule, counts summed, the multi-label scores concatenated); COCO results are merged per image
        id, so an image that a padding ``DistributedSampler`` gave two processes is scored once. Afterwards
        each process holds the whole val set's state. A no-op in one process, and done once between
        ``reset`` calls.
        """
        if self.gathered or world_size() == 1:
            return
        for m in self._metrics:
            m.sync(should_sync=True)
        states: list[Any] = [None] * world_size()
        dist.all_gather_object(states, self.coco_results)
        coco: dict[int, list[dict]] = {}
        for st in states:
            for image_id, entries in st.items():
                coco.setdefault(image_id, entries)
        self.coco_results = dict(sorted(coco.items()))
        self.gathered = True

    def compute(self) -> dict[str, float]:
        self.gather()
        out: dict[str, float] = {}
        for task, part in self.parts.items():  # attributes name their keys per group (attr.<group>/acc)
            values = part.compute()
            out.update(values if task == "attr" else {f"{task}/{k}": v for k, v in values.items()})
        if self.coco_gt is not None and self.image_ids:
            for task, iou_type in COCO_TASKS.items():
                if task in self.tasks:
                    stats, ev = coco_evaluate(self.coco_gt, self.results, self.image_ids, iou_type)
                    self.coco_evals[task] = ev
                    out.update({f"{task}/{k}": v for k, v in stats.items()})
        return out

    def confusion_matrix(self) -> torch.Tensor | None:
        self.gather()
        if self.cls is None or not self.cls.count:
            return None
        return self.cls.confusion.compute()

    def write_predictions(self, out_dir: str | Path, prefix: str = "") -> list[Path]:
        """COCO results files (``bbox.json``, ``segm.json``) exactly as COCOeval scored them."""
        self.gather()
        if self.coco_gt is None or not self.image_ids:
            return []
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for task, iou_type in COCO_TASKS.items():
            if task in self.tasks:
                path = out_dir / f"{prefix}{iou_type}.json"
                path.write_text(json.dumps(results_for(self.results, iou_type)))
                written.append(path)
        return written


def selection_score(metrics: dict[str, float]) -> float | None:
    """Mean of each present task's main metric (``MAIN_METRICS``): one number to pick the best checkpoint."""
    main = [metrics[f"{t}/{m}"] for t, m in MAIN_METRICS.items() if f"{t}/{m}" in metrics]
    return sum(main) / len(main) if main else None
