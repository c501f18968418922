"""fourm21-predict: run a trained model on your images; overlays, predictions.json and a summary.

    fourm21-predict ckpt_path=runs/.../best.ckpt source=photos/ score_thr=0.4
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from pycocotools import mask as mask_utils
from rich.progress import Progress

from fourm21.api import Fourm21Model, load
from fourm21.data.images import list_images, read_image
from fourm21.engine.common import CONFIG_DIR, friendly_errors, run_dir_of
from fourm21.metrics.plots import save_overlay


def prediction_entries(pred: dict[str, torch.Tensor], image_id: int, class_names: list[str],
                       cat_ids: list[int] | None = None) -> list[dict]:
    """COCO results entries (bbox xywh, score, category, RLE mask) for one image's detections.

    ``cat_ids`` maps contiguous labels to the training data's category ids (COCO's 1..90); without
    it, ids are label + 1."""
    if "boxes" not in pred:
        return []
    entries = []
    masks = pred.get("masks")
    rles = mask_utils.encode(np.asfortranarray(masks.numpy().astype(np.uint8).transpose(1, 2, 0))) \
        if masks is not None and len(masks) else []
    for i, (box, score, label) in enumerate(zip(pred["boxes"].tolist(), pred["scores"].tolist(),
                                                pred["labels"].tolist())):
        e = {"id": 0, "image_id": image_id, "category_id": cat_ids[int(label)] if cat_ids else int(label) + 1,
             "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "score": round(float(score), 5),
             "area": (box[2] - box[0]) * (box[3] - box[1]), "iscrowd": 0,
             "category_name": class_names[int(label)] if int(label) < len(class_names) else str(int(label))}
        if len(rles):
            e["segmentation"] = {"size": rles[i]["size"], "counts": rles[i]["counts"].decode("ascii")}
            e["area"] = float(mask_utils.area(rles[i]))
        entries.append(e)
    return entries


def classification_entry(pred: dict[str, torch.Tensor], names: list[str]) -> dict | None:
    if "class_label" not in pred:
        return None
    def name(k: int) -> str:
        return names[k] if k < len(names) else str(k)
    k = int(pred["class_label"])
    return {"class_id": k, "class_name": name(k), "score": float(pred["class_probs"][k]),
            "top5": [{"class_id": int(c), "class_name": name(int(c)), "score": round(float(p), 5)}
                     for c, p in zip(pred["class_topk"], pred["class_topk_probs"])]}


def image_label_entries(pred: dict[str, torch.Tensor], model: Fourm21Model) -> dict:
    """Attributes ({group: {value, score}}) and multi-labels ([{id, name, score}] above the thresholds)."""
    out: dict = {}
    groups = sorted({k.split(".")[1] for k in pred if k.startswith("attr.")})
    if groups:
        names = model.attribute_classes
        out["attributes"] = {}
        for g in groups:
            k = int(pred[f"attr.{g}.label"])
            values = names.get(g, [])
            out["attributes"][g] = {"value": values[k] if k < len(values) else k,
                                    "score": round(float(pred[f"attr.{g}.probs"][k]), 5)}
    if "label_set" in pred:
        names = model.label_names
        out["labels"] = [{"id": int(names[i]) if i < len(names) and names[i].isdigit() else i,
                          "name": names[i] if i < len(names) else str(i),
                          "score": round(float(pred["label_probs"][i]), 5)}
                         for i in pred["label_set"].nonzero().flatten().tolist()]
    return out


def read_captions(path: str | None) -> dict[str, str]:
    """{file name: caption} from a CSV with ImageID and Caption columns (the multi-label format)."""
    if not path:
        return {}
    from fourm21.data.csv_labels import read_csv_rows
    return {Path(r["ImageID"]).name: r["Caption"] for r in read_csv_rows(path, ["ImageID", "Caption"])}


def run_predict(cfg: DictConfig) -> dict:
    run_dir = run_dir_of(cfg)
    files = list_images(cfg.source)
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model: Fourm21Model = load(cfg.ckpt_path, device)
    model.set_thresholds(cfg.score_thr, cfg.get("iou_thr"), cfg.get("max_det"))
    overlays = run_dir / "overlays"
    if cfg.save_overlays:
        overlays.mkdir(parents=True, exist_ok=True)
    captions = read_captions(cfg.get("captions"))
    images, annotations, counts, top_classes = [], [], Counter(), Counter()
    with Progress(transient=False) as progress:
        task = progress.add_task("predicting", total=len(files))
        for start in range(0, len(files), cfg.batch_size):
            chunk = files[start:start + cfg.batch_size]
            arrays = [read_image(f) for f in chunk]
            texts = [captions.get(Path(f).name, "") for f in chunk] if captions else None
            preds = model.predict(arrays, batch_size=len(arrays), img_size=cfg.get("img_size"), captions=texts)
            for f, arr, pred in zip(chunk, arrays, preds):
                image_id = len(images) + 1
                h, w = arr.shape[:2]
                entry = {"id": image_id, "file_name": str(f), "height": h, "width": w}
                cls = classification_entry(pred, model.image_class_names)
                if cls is not None:
                    entry["classification"] = cls
                    top_classes[cls["class_name"]] += 1
                entry.update(image_label_entries(pred, model))
                images.append(entry)
                dets = prediction_entries(pred, image_id, model.class_names, model.meta.get("cat_ids"))
                for d in dets:
                    d["id"] = len(annotations) + 1
                    annotations.append(d)
                    counts[d["category_name"]] += 1
                if cfg.save_overlays:
                    extra = image_label_entries(pred, model)
                    lines = [f"{g}: {v['value']} {v['score']:.2f}" for g, v in extra.get("attributes", {}).items()]
                    if "labels" in extra:
                        lines.append("labels: " + (", ".join(f"{x['name']} {x['score']:.2f}" for x in extra["labels"])
                                                   or "none"))
                    save_overlay(arr, pred, model.class_names, model.image_class_names,
                                 overlays / f"{image_id:06d}_{Path(f).stem}.png", cfg.score_thr, cfg.show_semantic,
                                 caption_lines=lines)
                progress.advance(task)
    cat_ids = model.meta.get("cat_ids") or list(range(1, len(model.class_names) + 1))
    categories = [{"id": c, "name": n} for c, n in zip(cat_ids, model.class_names)]
    result = {"images": images, "annotations": annotations, "categories": categories}
    (run_dir / "predictions.json").write_text(json.dumps(result))
    print(f"{len(images)} images, {len(annotations)} detections"
          + (f": {dict(counts.most_common(10))}" if counts else ""))
    if top_classes:
        print(f"image classes: {dict(top_classes.most_common(10))}")
    print(f"results: {run_dir / 'predictions.json'}" + (f", overlays: {overlays}" if cfg.save_overlays else ""))
    return result


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
@friendly_errors
def main(cfg: DictConfig) -> None:
    run_predict(cfg)


if __name__ == "__main__":
    main()
