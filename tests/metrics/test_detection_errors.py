"""Detection error analysis on hand-made ground truth and predictions whose answers are known exactly:
the confusion matrix (one swapped class, misses, one false detection, a crowd region, a low score),
per-class AP against COCOeval run on one class, the worst-image ranking; and the training report's keys."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from fourm21.inference.render import plot_worst_images
from fourm21.metrics.coco import coco_evaluate
from fourm21.metrics.detection_errors import (
    BACKGROUND,
    detection_errors,
    per_class_ap,
    results_to_prediction,
    worst_images,
)
from fourm21.metrics.plots import plot_detection_confusion
from fourm21.metrics.report import confusion_markdown, per_class_ap_markdown
from tests.conftest import REPO

SIZE = 100
CATS = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}, {"id": 7, "name": "d"}]  # d: no GT


def _rle(box: list[float]) -> dict:
    """The box (x, y, w, h) as a filled mask, RLE with str counts (as the evaluator's results hold it)."""
    m = np.zeros((SIZE, SIZE), dtype=np.uint8, order="F")
    x, y, w, h = (int(v) for v in box)
    m[y:y + h, x:x + w] = 1
    rle = mask_utils.encode(m)
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _gt() -> COCO:
    anns = []
    def add(image_id: int, cat: int, box: list[float], crowd: int = 0) -> None:
        anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat, "bbox": box,
                     "area": box[2] * box[3], "iscrowd": crowd, "segmentation": _rle(box) if crowd else
                     [[box[0], box[1], box[0] + box[2], box[1], box[0] + box[2], box[1] + box[3], box[0],
                       box[1] + box[3]]]})
    add(1, 1, [10, 10, 20, 20])   # a: found
    add(1, 2, [50, 50, 30, 30])   # b: detected as c (swapped class)
    add(2, 3, [10, 10, 20, 20])   # c: missed
    add(2, 3, [60, 60, 20, 20])   # c: missed
    add(3, 1, [10, 10, 30, 30])   # a: found
    add(3, 1, [60, 10, 30, 30], crowd=1)  # a crowd region: a detection on it is no error
    add(4, 2, [20, 20, 40, 40])   # b: found (a perfect image)
    coco = COCO()
    coco.dataset = {"images": [{"id": i, "file_name": f"{i}.png", "height": SIZE, "width": SIZE} for i in (1, 2, 3, 4)],
                    "annotations": anns, "categories": CATS}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _det(image_id: int, cat: int, box: list[float], score: float) -> dict:
    return {"image_id": image_id, "category_id": cat, "bbox": box, "score": score, "segmentation": _rle(box)}


def _results() -> dict[int, list[dict]]:
    return {1: [_det(1, 1, [10, 10, 20, 20], 0.9), _det(1, 3, [50, 50, 30, 30], 0.8)],
            2: [],
            3: [_det(3, 1, [11, 11, 30, 30], 0.9),   # IoU ~0.88 with its object
                _det(3, 2, [10, 60, 20, 20], 0.7),   # on no object: false
                _det(3, 1, [60, 10, 30, 30], 0.6),   # on the crowd region: ignored
                _det(3, 2, [60, 60, 20, 20], 0.1)],  # below score_thr: not counted
            4: [_det(4, 2, [20, 20, 40, 40], 0.95)]}


# rows true a, b, c, d, background; columns predicted a, b, c, d, background (= missed)
EXPECTED = np.array([[2, 0, 0, 0, 0],
                     [0, 1, 1, 0, 0],
                     [0, 0, 0, 0, 2],
                     [0, 0, 0, 0, 0],
                     [0, 1, 0, 0, 0]])


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_confusion_matrix_known_answer(iou_type):
    errs = detection_errors(_gt(), _results(), iou_type, iou_thr=0.5, score_thr=0.25)
    assert errs.class_names == ["a", "b", "c", "d", BACKGROUND]
    np.testing.assert_array_equal(errs.matrix, EXPECTED)
    out = errs.to_json()
    assert out["matrix"] == EXPECTED.tolist() and out["iou_thr"] == 0.5 and out["score_thr"] == 0.25
    json.dumps(out)  # report.json can hold it


def test_thresholds_change_the_answer():
    gt, res = _gt(), _results()
    strict = detection_errors(gt, res, "bbox", iou_thr=0.9, score_thr=0.25)  # 0.88 is no longer a match
    assert strict.matrix[0, 0] == 1 and strict.matrix[0, -1] == 1 and strict.matrix[-1, 0] == 1
    low = detection_errors(gt, res, "bbox", iou_thr=0.5, score_thr=0.05)  # the 0.1 detection of b counts now
    assert low.matrix[-1, 1] == 2


def test_a_right_class_detection_beats_a_higher_scoring_wrong_one():
    """Matching looks for the own class first (as COCOeval does); only leftovers become confusions."""
    res = {1: [_det(1, 3, [10, 10, 20, 20], 0.95), _det(1, 1, [10, 10, 20, 20], 0.5)]}
    errs = detection_errors(_gt(), res, "bbox", iou_thr=0.5, score_thr=0.25)
    assert errs.matrix[0, 0] == 1 and errs.matrix[-1, 2] == 1  # a found; the c on it is a false detection
    assert errs.matrix[1, -1] == 1  # b missed


def test_worst_images_ranking():
    errs = detection_errors(_gt(), _results(), "bbox", iou_thr=0.5, score_thr=0.25)
    ranked = worst_images(errs.per_image, 10)
    assert [e.image_id for e in ranked] == [2, 1, 3]  # 2 misses; then 1 error each, by id; image 4 has none
    assert [e.summary() for e in ranked] == [
        {"image_id": 2, "gt": 2, "matched": 0, "confused": 0, "missed": 2, "false": 0},
        {"image_id": 1, "gt": 2, "matched": 1, "confused": 1, "missed": 0, "false": 0},
        {"image_id": 3, "gt": 1, "matched": 1, "confused": 0, "missed": 0, "false": 1}]
    assert [e.image_id for e in worst_images(errs.per_image, 1)] == [2]


def _ap_results() -> list[dict]:
    """Imperfect, overlapping detections so that per-class APs are neither 0 nor 1."""
    res = [r for rs in _results().values() for r in rs]
    res += [_det(2, 3, [12, 12, 20, 20], 0.3), _det(2, 3, [40, 40, 10, 10], 0.5), _det(4, 2, [22, 20, 40, 44], 0.6),
            _det(4, 1, [0, 0, 10, 10], 0.4)]
    return res


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_per_class_ap_is_cocoeval_on_that_class(iou_type):
    gt = _gt()
    results = _ap_results()
    _, ev = coco_evaluate(gt, results, [1, 2, 3, 4], iou_type)
    table = per_class_ap(ev, gt)
    assert list(table) == ["a", "b", "c"]  # d has no ground truth
    assert {name: row["instances"] for name, row in table.items()} == {"a": 2, "b": 2, "c": 2}
    for cat in CATS[:3]:
        with contextlib.redirect_stdout(io.StringIO()):
            one = COCOeval(gt, gt.loadRes([{k: v for k, v in r.items() if k != ("bbox" if iou_type == "segm" else
                                                                                   "segmentation")}
                                           for r in results]), iou_type)
            one.params.imgIds = [1, 2, 3, 4]
            one.params.catIds = [cat["id"]]
            one.evaluate()
            one.accumulate()
            one.summarize()
        row = table[cat["name"]]
        assert row["ap"] == pytest.approx(one.stats[0], abs=1e-12), cat["name"]
        assert row["ap50"] == pytest.approx(one.stats[1], abs=1e-12), cat["name"]
        assert row["ap75"] == pytest.approx(one.stats[2], abs=1e-12), cat["name"]
    assert 0 < table["b"]["ap"] < 1 and 0 < table["c"]["ap"] < 1
    # the mean over classes is COCOeval's own mAP
    assert np.mean([r["ap"] for r in table.values()]) == pytest.approx(ev.stats[0], abs=1e-12)
    md = per_class_ap_markdown(table)
    assert md.count("\n") == 4 and "| b |" in md


def test_plots_and_markdown(tmp_path):
    gt, res = _gt(), _results()
    errs = detection_errors(gt, res, "segm", iou_thr=0.5, score_thr=0.25)
    assert plot_detection_confusion(errs, tmp_path / "cm.png").stat().st_size > 0
    ranked = worst_images(errs.per_image, 4)
    image = np.full((SIZE, SIZE, 3), 128, dtype=np.uint8)
    panels = [(image, results_to_prediction(res[e.image_id], [1, 2, 3, 7], masks=True), e) for e in ranked]
    assert panels[1][1]["masks"].shape == (2, SIZE, SIZE) and panels[1][1]["labels"].tolist() == [0, 2]
    assert plot_worst_images(panels, errs.class_names, tmp_path / "worst.png").stat().st_size > 0
    md = confusion_markdown(errs.to_json())
    assert "| background | 0 | 1 | 0 | 0 | 0 |" in md


def test_error_settings_come_from_the_config():
    from omegaconf import OmegaConf

    from fourm21.errors import ConfigError
    from fourm21.training.evaluation import error_settings

    defaults = OmegaConf.load(REPO / "fourm21" / "configs" / "eval.yaml").error_analysis
    train = OmegaConf.load(REPO / "fourm21" / "configs" / "train.yaml").error_analysis
    assert error_settings(defaults) == OmegaConf.to_container(defaults) == OmegaConf.to_container(train)
    assert error_settings({"iou_thr": 0.3, "score_thr": 0.0, "worst_images": 0})["iou_thr"] == 0.3
    for key, bad in (("iou_thr", 0), ("score_thr", 1.5), ("worst_images", -1)):
        with pytest.raises(ConfigError, match=f"error_analysis.{key}"):
            error_settings({**OmegaConf.to_container(defaults), key: bad})


def test_training_report_has_the_error_analysis(tiny_run):
    work, run_dir, _ = tiny_run
    val = json.loads((work / "data" / "shapes" / "annotations" / "instances_val.json").read_text())
    objects = sum(1 for a in val["annotations"] if not a.get("iscrowd", 0))
    for name in ("confusion_matrix_det.png", "confusion_matrix_inst.png", "worst_images.png"):
        assert (run_dir / name).is_file(), name
    report = json.loads((run_dir / "report.json").read_text())
    names = ["circle", "square", "triangle"]
    for task in ("det", "inst"):
        conf = report[f"val/{task}/confusion"]
        assert conf["classes"] == [*names, BACKGROUND] and conf["iou_thr"] == 0.5 and conf["score_thr"] == 0.25
        m = np.array(conf["matrix"])
        assert m.shape == (4, 4) and m[-1, -1] == 0
        assert m[:-1].sum() == objects  # every val object is in a row: found, confused or missed
        for c in names:
            assert 0 <= report[f"val/{task}/ap.{c}"] <= 1
        assert isinstance(report[f"val/{task}/worst_images"], list)
    md = (run_dir / "report.md").read_text()
    assert "Per-class AP, boxes" in md and "Per-class AP, masks" in md and "Detection confusion, boxes" in md
