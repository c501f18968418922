"""The evaluation that ends every training run and every fourm21-eval: validate, then write report.json,
report.md, the COCO results files, the error analysis and the plots."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import OmegaConf

from fourm21.data.coco import DROPPED
from fourm21.data.images import read_image, skipped_images
from fourm21.errors import CheckpointError, ConfigError, DatasetError
from fourm21.inference.checkpoints import architecture, load_state, read_checkpoint
from fourm21.inference.render import plot_prediction_grid, plot_worst_images
from fourm21.metrics.detection_errors import (
    ERROR_IOU_TYPES,
    class_list,
    detection_errors,
    per_class_ap,
    results_to_prediction,
    worst_images,
)
from fourm21.metrics.evaluator import MultiTaskEvaluator
from fourm21.metrics.plots import plot_confusion_matrix, plot_detection_confusion, plot_loss_curves, plot_pr_curves
from fourm21.metrics.report import confusion_markdown, per_class_ap_markdown, per_class_markdown, write_report
from fourm21.training.module import MultiTaskModule
from fourm21.training.semi_supervised import module_class


def load_module(ckpt_path: str | Path) -> MultiTaskModule:
    """Rebuild the module from a checkpoint (its config is inside; with ``ema.enabled`` its validation runs
    the EMA weights, ``module.inference_net``); a CheckpointError naming the file
    when it is missing or cut short, and what differs when its weights do not fit its config."""
    ckpt = read_checkpoint(ckpt_path)
    hp = ckpt["hyper_parameters"]
    try:
        module = module_class(hp.get("semi"))(model=hp["model"], loss=hp.get("loss") or {}, optim=hp.get("optim") or {},
                                              meta=hp.get("meta"), semi=hp.get("semi"), ema=hp.get("ema"))
    except Exception as e:  # noqa: BLE001 - a config this version cannot build, whatever the cause
        raise CheckpointError(f"{ckpt_path}: its model config cannot be built by this version of fourm21 "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    load_state(module, ckpt["state_dict"], ckpt_path, f"its config ({architecture(hp['model'])})")
    return module


def data_report(datamodule: Any, run_dir: Path) -> dict[str, float]:
    """``data/skipped_images`` (distinct files left out under ``data.on_bad_image=skip``, listed in
    ``skipped_images.tsv``), ``data/annotations_dropped`` and ``data/annotations_repaired`` (COCO checks)."""
    sets = [*getattr(datamodule, "train_sets", {}).values(), *getattr(datamodule, "val_sets", {}).values()]
    skipped = skipped_images(sets)
    if skipped:
        (run_dir / "skipped_images.tsv").write_text("file\treason\n" + "".join(f"{f}\t{r}\n"
                                                                          for f, r in skipped.items()))
    repairs: Counter[str] = Counter()
    for source in {str(getattr(ds, "ann_file", id(ds))): ds for ds in sets}.values():  # each file once
        repairs.update(getattr(source, "repairs", None) or {})
    dropped = sum(n for k, n in repairs.items() if k in DROPPED)
    return {"data/skipped_images": float(len(skipped)), "data/annotations_dropped": float(dropped),
            "data/annotations_repaired": float(sum(repairs.values()) - dropped)}


def make_plots(module: MultiTaskModule, datamodule: Any, run_dir: Path) -> list[Path]:
    """Loss curves (if a CSV log is there), confusion matrix, precision-recall curves, a grid of predictions."""
    out = []
    curves = plot_loss_curves(run_dir / "logs" / "metrics.csv", run_dir / "loss_curves.png")
    if curves:
        out.append(curves)
    val_sets = list(datamodule.val_sets.values())
    for ds, ev in zip(val_sets, module.evaluators):
        matrix = next(iter(ev.confusion_matrices().values()), None)
        if matrix is not None:
            names = getattr(ds, "image_class_names", []) or [str(i) for i in range(len(matrix))]
            out.append(plot_confusion_matrix(matrix, names, run_dir / "confusion_matrix.png"))
            break
    pr = plot_pr_curves(module.evaluators, [getattr(ds, "image_class_names", []) for ds in val_sets],
                        run_dir / "pr_curves.png")
    if pr:
        out.append(pr)
    # prefer a val set with boxes for the picture: it shows every head at once
    order = sorted(module.last_val_preds, key=lambda i: "boxes" not in module.last_val_preds[i][1][0])
    if order:
        idx = order[0]
        images, preds = module.last_val_preds[idx]
        ds = val_sets[idx] if idx < len(val_sets) else None
        out.append(plot_prediction_grid(images, preds, getattr(ds, "class_names", []),
                                        getattr(ds, "image_class_names", []), run_dir / "val_predictions.png",
                                        settings=module.decode_settings(module.inference_net)))
    return out


def error_settings(given: Mapping[str, Any]) -> dict[str, Any]:
    """The config's ``error_analysis`` keys (``iou_thr``, ``score_thr``, ``worst_images``), checked: a
    ConfigError naming the key for an impossible value."""
    settings = OmegaConf.to_container(given, resolve=True) if OmegaConf.is_config(given) else dict(given)
    for key, low, high in (("iou_thr", 0.0, 1.0), ("score_thr", 0.0, 1.0)):
        value = settings.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high \
                or (key == "iou_thr" and value == 0):
            raise ConfigError(f"error_analysis.{key}: must be a number in {'(0' if key == 'iou_thr' else '[0'}, 1], "
                              f"got {value!r}")
    n = settings.get("worst_images")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"error_analysis.worst_images: must be an integer >= 0 (0 = no grid), got {n!r}")
    return settings


def _image_of(ds: Any, image_id: int) -> Any:
    """The val image ``image_id`` at its original size ((H, W, 3) uint8), or None when it cannot be read."""
    img_dir = getattr(ds, "img_dir", None)
    info = ds.coco.imgs.get(image_id) if getattr(ds, "coco", None) is not None else None
    if img_dir is None or info is None:
        return None
    try:
        return read_image(Path(img_dir) / info["file_name"])
    except DatasetError:
        return None


def error_analysis(evaluators: list[MultiTaskEvaluator], val_sets: Mapping[str, Any], run_dir: Path, stage: str,
                   settings: Mapping[str, Any], plots: bool = True
                   ) -> tuple[dict[str, float], dict[str, Any], dict[str, str]]:
    """Per-class AP (boxes, masks), the detection confusion matrices and the worst images of each val set
    with COCO ground truth: returns (per-class AP metrics ``{stage}/{task}/ap.<class>``, report.json details
    ``{stage}/{task}/confusion`` and ``{stage}/{task}/worst_images``, report.md sections). With ``plots``,
    ``confusion_matrix_{det,inst}.png`` and ``worst_images.png`` go into ``run_dir`` (with several such
    val sets, each key gets its set's name after the stage and each file its name as a suffix)."""
    scored = [(name, ds, ev) for (name, ds), ev in zip(val_sets.items(), evaluators)
              if ev.coco_gt is not None and ev.image_ids]
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {}
    sections: dict[str, str] = {}
    iou_thr, score_thr = float(settings["iou_thr"]), float(settings["score_thr"])
    for name, ds, ev in scored:
        tag, suffix = ("", "") if len(scored) == 1 else (f"{name}/", f"_{name}")
        cat_ids, class_names = class_list(ev.coco_gt, ev.cat_ids)
        worst_done = False
        for task, iou_type in ev.coco.items():
            kind = {"bbox": "boxes", "segm": "masks"}.get(iou_type, iou_type)
            coco_ev = ev.coco_evals.get(task)
            if coco_ev is not None:
                table = per_class_ap(coco_ev, ev.coco_gt)
                metrics.update({f"{stage}/{tag}{task}/ap.{c}": row["ap"] for c, row in table.items()})
                sections[f"Per-class AP, {kind} ({name})"] = per_class_ap_markdown(table)
            if iou_type not in ERROR_IOU_TYPES:
                continue  # confusion and worst images match boxes or masks (keypoints: their AP only)
            if iou_type == "segm" and not any("segmentation" in r for r in ev.results):
                continue  # no mask predictions to match
            errs = detection_errors(ev.coco_gt, ev.coco_results, iou_type, iou_thr, score_thr, cat_ids)
            details[f"{stage}/{tag}{task}/confusion"] = errs.to_json()
            worst = worst_images(errs.per_image, int(settings["worst_images"]))
            details[f"{stage}/{tag}{task}/worst_images"] = [
                {**e.summary(), "file_name": ev.coco_gt.imgs.get(e.image_id, {}).get("file_name")} for e in worst]
            sections[f"Detection confusion, {kind} ({name})"] = confusion_markdown(details[
                f"{stage}/{tag}{task}/confusion"])
            if not plots:
                continue
            plot_detection_confusion(errs, run_dir / f"confusion_matrix_{task}{suffix}.png", stage)
            if not worst_done and worst:  # boxes when there are, else masks; one grid per val set
                panels = [(image, results_to_prediction(ev.coco_results[e.image_id], cat_ids, masks=True), e)
                          for e in worst if (image := _image_of(ds, e.image_id)) is not None]
                if panels:
                    plot_worst_images(panels, class_names, run_dir / f"worst_images{suffix}.png", score_thr)
                worst_done = True
    return metrics, details, sections


def evaluate_module(trainer: L.Trainer, module: MultiTaskModule, datamodule: Any, run_dir: Path,
                    ckpt_path: str | None = None, extra: dict[str, Any] | None = None, plots: bool = True,
                    title: str = "fourm21 evaluation", stage: str = "val", *,
                    error_analysis_cfg: Mapping[str, Any]) -> dict[str, float]:
    """Validate; write report.json / report.md, predictions/{bbox,segm}.json and plots into ``run_dir``.

    The same function ends every training run and every ``fourm21-eval``, so both reports share one
    format. ``stage`` names the split in the keys (``val/...`` or ``test/...``). ``error_analysis_cfg``:
    the config's ``error_analysis`` keys (see ``error_settings``), for the detection error analysis.
    """
    settings = error_settings(error_analysis_cfg)
    t0 = time.time()
    module.tune_thresholds = False  # multi-label thresholds: the checkpoint's, not re-tuned on the split scored
    module.build_evaluators(datamodule.val_sets)
    results = trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
    merged: dict[str, float] = {}
    for r in results:
        merged.update({k: float(v) for k, v in r.items()})
    metrics = {f"{stage}/{k.removeprefix('val/').removesuffix('_epoch')}": v for k, v in merged.items()
               if k.startswith("val/") and not k.endswith("_step")}
    metrics.update({f"{stage}/{k}": v for k, v in module.last_metrics.items()})
    metrics[f"time/{stage}_s"] = time.time() - t0
    if not trainer.is_global_zero:  # every DDP process validated and holds the gathered metrics; one writes
        return {**metrics, **(extra or {})}
    metrics.update(data_report(datamodule, run_dir))
    metrics.update(extra or {})
    names = list(datamodule.val_sets)
    sections = {}
    for name, ds, ev in zip(names, datamodule.val_sets.values(), module.evaluators):
        prefix = "" if len(names) == 1 else f"{name}_"
        ev.write_predictions(run_dir / "predictions", prefix)
        for part in ev.parts.values():  # the image classification heads: precision, recall, F1 per class
            if hasattr(part, "per_class_table") and part.count:
                sections[f"Per-class classification ({name})"] = per_class_markdown(
                    part.per_class_table(), getattr(ds, "image_class_names", []))
    per_class, details, error_sections = error_analysis(module.evaluators, datamodule.val_sets, run_dir, stage,
                                                        settings, plots)
    sections.update(error_sections)
    notes = {"checkpoint": ckpt_path or "in-memory model",
             **({"weights": "the moving average (ema.enabled)"} if module.ema is not None else {}),
             f"{stage} images": ", ".join(f"{k}: {len(v)}" for k, v in datamodule.val_sets.items())}
    if metrics["data/skipped_images"]:
        notes["skipped images"] = f"{int(metrics['data/skipped_images'])}, listed in skipped_images.tsv"
    write_report(run_dir, metrics, title=title, notes=notes, sections=sections, details={**per_class, **details})
    if plots:
        make_plots(module, datamodule, run_dir)
    return {**metrics, **per_class}


def print_summary(metrics: dict[str, float], run_dir: Path) -> None:
    shown = {k: v for k, v in metrics.items() if k.split("/")[0] in ("val", "test") and "loss" not in k
             and "/ap." not in k}  # per-class AP: in report.md
    print("\n".join(f"  {k:<24} {v:.4f}" for k, v in shown.items()))
    print(f"report: {run_dir / 'report.json'}")
