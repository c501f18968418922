import json

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from fourm21.data.coco import CocoDataset
from fourm21.data.collate import collate_samples
from fourm21.data.transforms import build_dense_transform
from fourm21.metrics.coco import STAT_NAMES
from tests.conftest import evaluator


def _perfect_preds(batch, num_classes):
    """Predictions equal to the ground truth of a batch (letterboxed coordinates)."""
    preds = []
    for i in range(len(batch["image"])):
        valid = batch["gt_labels"][i] >= 0
        masks = batch["gt_masks"][i][valid]
        preds.append({
            "boxes": batch["gt_boxes"][i][valid], "labels": batch["gt_labels"][i][valid],
            "scores": torch.linspace(0.9, 0.5, int(valid.sum())),
            "masks": masks,
            "class_label": batch["label"][i], "class_probs": torch.nn.functional.one_hot(batch["label"][i], 4).float(),
            "semantic": batch["semantic"][i].clamp(max=num_classes),
        })
    return preds


@pytest.mark.parametrize("img_size", [64, 96])  # 96 exercises the mapping back from a rescaled input
def test_perfect_predictions_score_one(shapes_root, img_size):
    ds = CocoDataset(shapes_root / "images", shapes_root / "annotations/instances_val.json",
                     build_dense_transform(img_size, train=False), semantic_dir=shapes_root / "semantic")
    ev = evaluator(ds, "cls", "det", "inst", "sem")
    batch = collate_samples([ds[i] for i in range(len(ds))])
    ev.update(_perfect_preds(batch, 3), batch)
    m = ev.compute()
    assert m["cls/acc"] == 1.0 and m["cls/f1_macro"] == 1.0
    assert m["det/map50"] == pytest.approx(1.0) and m["det/map"] > 0.95
    assert m["inst/map50"] == pytest.approx(1.0) and m["inst/map"] > 0.9
    assert m["sem/miou"] == pytest.approx(1.0) and m["sem/pixel_acc"] == 1.0 and m["sem/dice"] == pytest.approx(1.0)
    assert ev.score(m) == pytest.approx((1.0 + m["det/map"] + m["inst/map"] + 1.0) / 4)


def test_wrong_predictions_score_low(shapes_root):
    ds = CocoDataset(shapes_root / "images", shapes_root / "annotations/instances_val.json",
                     build_dense_transform(64, train=False), semantic_dir=shapes_root / "semantic")
    ev = evaluator(ds, "cls", "det", "inst", "sem")
    batch = collate_samples([ds[i] for i in range(len(ds))])
    preds = _perfect_preds(batch, 3)
    for p in preds:
        p["labels"] = (p["labels"] + 1) % 3  # every box gets the wrong class
        p["class_label"] = (p["class_label"] + 1) % 4
    ev.update(preds, batch)
    m = ev.compute()
    assert m["det/map50"] < 0.05 and m["cls/acc"] == 0.0


def test_empty_predictions_give_zero_not_an_error(shapes_root):
    ds = CocoDataset(shapes_root / "images", shapes_root / "annotations/instances_val.json",
                     build_dense_transform(64, train=False), semantic_dir=shapes_root / "semantic")
    ev = evaluator(ds, "det", "inst")
    batch = collate_samples([ds[0], ds[1]])
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "scores": torch.zeros(0),
             "masks": torch.zeros(0, 64, 64, dtype=torch.bool)}
    ev.update([empty, empty], batch)
    m = ev.compute()
    assert set(m) == {f"{t}/{k}" for t in ("det", "inst") for k in STAT_NAMES}
    assert all(v == 0.0 for v in m.values())


def test_report_equals_pycocotools_on_the_written_json(shapes_root, tmp_path):
    """Parity: the numbers in the report are exactly what pycocotools gives on predictions/{bbox,segm}.json."""
    ds = CocoDataset(shapes_root / "images", shapes_root / "annotations/instances_val.json",
                     build_dense_transform(96, train=False), semantic_dir=shapes_root / "semantic")
    ev = evaluator(ds, "det", "inst")
    batch = collate_samples([ds[i] for i in range(len(ds))])
    preds = _perfect_preds(batch, 3)
    g = torch.Generator().manual_seed(0)
    for p in preds:  # imperfect predictions, so the stats are not all 1
        p["boxes"] = p["boxes"] + torch.randn(p["boxes"].shape, generator=g) * 3
        p["scores"] = torch.rand(len(p["scores"]), generator=g)
        p["masks"] = torch.roll(p["masks"], shifts=2, dims=2)
    ev.update(preds, batch)
    m = ev.compute()
    assert 0.05 < m["det/map"] < 0.95
    bbox, segm = ev.write_predictions(tmp_path / "predictions")
    for path, iou_type, task in ((bbox, "bbox", "det"), (segm, "segm", "inst")):
        gt = COCO(str(shapes_root / "annotations/instances_val.json"))
        dt = gt.loadRes(str(path))
        ref = COCOeval(gt, dt, iou_type)
        ref.evaluate()
        ref.accumulate()
        ref.summarize()
        for name, value in zip(STAT_NAMES, ref.stats):
            assert m[f"{task}/{name}"] == pytest.approx(max(value, 0.0), abs=1e-12), (task, name)


def test_report_files(tmp_path):
    from fourm21.metrics.report import write_report
    write_report(tmp_path, {"val/det/map50": 0.5, "train/loss": 1.25, "time/train_s": 3})
    data = json.loads((tmp_path / "report.json").read_text())
    assert data == {"time/train_s": 3.0, "train/loss": 1.25, "val/det/map50": 0.5}
    md = (tmp_path / "report.md").read_text()
    assert "| val | det | map50 | 0.5000 |" in md


def test_category_ids_are_written_back_as_the_data_sets_own(shapes_root, tmp_path):
    """Ids 90, 5, 17 (not 1..N, not in name order): results carry the original ids and score 1 when perfect."""
    remap = {1: 90, 2: 5, 3: 17}
    data = json.loads((shapes_root / "annotations/instances_val.json").read_text())
    for c in data["categories"]:
        c["id"] = remap[c["id"]]
    for a in data["annotations"]:
        a["category_id"] = remap[a["category_id"]]
    ann = tmp_path / "remapped.json"
    ann.write_text(json.dumps(data))
    ds = CocoDataset(shapes_root / "images", ann, build_dense_transform(64, train=False))
    assert ds.cat_ids == [5, 17, 90]
    ev = evaluator(ds, "det", "inst")
    batch = collate_samples([ds[i] for i in range(len(ds))])
    ev.update(_perfect_preds(batch, 3), batch)
    m = ev.compute()
    assert m["det/map50"] == pytest.approx(1.0) and m["inst/map50"] == pytest.approx(1.0)
    bbox, _ = ev.write_predictions(tmp_path / "predictions")
    written = json.loads(bbox.read_text())
    truth = {(a["image_id"], a["category_id"]) for a in data["annotations"] if not a.get("iscrowd")}
    assert {r["category_id"] for r in written} <= {5, 17, 90}
    assert {(r["image_id"], r["category_id"]) for r in written} == truth
