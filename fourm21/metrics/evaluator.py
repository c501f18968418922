"""Collects every head's predictions over a data set and computes the flat ``task/metric`` dict.

Each head's metrics (``parts``, made by its task) read their own fields of the decoded predictions and the
batch (``add``); heads scored by COCOeval (``coco``: ``{name: 'bbox' | 'segm'}``) hand their predictions to
``to_results``, the one converter to COCO results. Under DDP each process sees a shard of the val set;
``compute`` first syncs: torchmetrics' own sync for every torchmetrics state (counts summed, multi-label
scores concatenated), and the COCO results, which torchmetrics has no state for, gathered per image id, so
COCOeval scores the whole set at once and every process returns the numbers a single-process run would.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torchmetrics import Metric

from fourm21.metrics.coco import coco_evaluate, results_for


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


def metric_key(name: str, key: str) -> str:
    """A head's metric key in the report: ``det`` + ``map`` -> ``det/map``; keys a part starts with '.' or '/'
    join without a slash (``attr`` + ``.colour/acc`` -> ``attr.colour/acc``)."""
    return f"{name}{key}" if key[:1] in "./" else f"{name}/{key}"


class MultiTaskEvaluator:
    """``update`` per batch with decoded predictions; ``compute`` returns e.g. ``{"cls/acc": ..., "det/map50": ...}``.

    ``parts``: ``{head name: metrics}`` (``add(preds, batch)``, ``compute()``, ``reset()``); ``coco``: the heads
    COCOeval scores and their IoU type, ``coco_params`` the COCOeval params each sets (keypoint sigmas);
    ``dataset``: the evaluation data set, whose ``coco`` ground truth (if any) COCOeval uses;
    ``to_results(pred, meta)``: one image's COCO results entries in its original pixels
    (``fourm21.inference.results.CocoResults``); ``main_metrics``: ``{head name: metric}`` for ``score``.
    Only heads whose targets the data set carries produce metrics.
    """

    def __init__(self, dataset: Any, parts: Mapping[str, Any] | None = None, coco: Mapping[str, str] | None = None,
                 to_results: Callable[[dict[str, torch.Tensor], dict], list[dict]] | None = None,
                 main_metrics: Mapping[str, str] | None = None,
                 coco_params: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.coco_gt = getattr(dataset, "coco", None)
        self.cat_ids = list(getattr(dataset, "cat_ids", []))  # contiguous label -> the data set's category id
        self.coco = dict(coco or {}) if self.coco_gt is not None else {}
        if self.coco and to_results is None:
            raise ValueError("MultiTaskEvaluator: COCO-scored heads need to_results")
        self.to_results = to_results
        self.main_metrics = dict(main_metrics or {})
        self.coco_params = {name: dict(p) for name, p in (coco_params or {}).items()}
        self.coco_evals: dict[str, Any] = {}
        # head name -> its metrics; their torchmetrics sync only in ``gather``
        self.parts = {name: part for name, part in (parts or {}).items() if part is not None}
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
        if self.coco:
            has = batch["has_boxes"].cpu()
            for p, meta, h in zip(preds, batch["meta"], has):
                if h and meta["image_id"] not in self.coco_results:  # an image seen twice is scored once
                    self.coco_results[meta["image_id"]] = self.to_results(p, meta)

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
        for name, part in self.parts.items():
            out.update({metric_key(name, k): v for k, v in part.compute().items()})
        if self.image_ids:
            for name, iou_type in self.coco.items():
                stats, ev = coco_evaluate(self.coco_gt, self.results, self.image_ids, iou_type,
                                          self.coco_params.get(name))
                self.coco_evals[name] = ev
                out.update({f"{name}/{k}": v for k, v in stats.items()})
        return out

    def confusion_matrices(self) -> dict[str, torch.Tensor]:
        """``{head name: (K, K) confusion matrix}`` of the heads whose metrics keep one and scored an image."""
        self.gather()
        return {name: part.confusion.compute() for name, part in self.parts.items()
                if hasattr(part, "confusion") and part.count}

    def score(self, metrics: Mapping[str, float]) -> float | None:
        """Mean of each scored head's main metric: one number to pick the best checkpoint."""
        return selection_score(metrics, self.main_metrics)

    def write_predictions(self, out_dir: str | Path, prefix: str = "") -> list[Path]:
        """COCO results files (``bbox.json``, ``segm.json``, ``keypoints.json``) exactly as COCOeval scored them."""
        self.gather()
        if not self.coco or not self.image_ids:
            return []
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for iou_type in dict.fromkeys(self.coco.values()):
            path = out_dir / f"{prefix}{iou_type}.json"
            path.write_text(json.dumps(results_for(self.results, iou_type)))
            written.append(path)
        return written


def selection_score(metrics: Mapping[str, float], main_metrics: Mapping[str, str]) -> float | None:
    """Mean of each present head's main metric (``{head name: metric}``): one number to pick the best checkpoint."""
    main = [metrics[metric_key(n, m)] for n, m in main_metrics.items() if metric_key(n, m) in metrics]
    return sum(main) / len(main) if main else None
