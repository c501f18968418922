"""data=yolo / data=voc / data=imagefolder from the command line: train on the folder as it is (converted once
into a cache), evaluate the checkpoint, score its predictions with pycocotools; the cache is reused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf
from PIL import Image, ImageDraw
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from fourm21.data.formats import cached
from fourm21.data.formats.to_coco import STAMP
from fourm21.metrics.coco import STAT_NAMES
from tests.conftest import TINY, run_cli, run_cli_here
from tests.data.formats.test_voc import voc_like
from tests.data.test_image_folder import tree

NET = [a for a in TINY if not a.startswith("data.")] + ["data.datamodule.num_workers=0"]
DENSE = ["experiment=coco", "data.img_size=64", "data.datamodule.batch_size=2", "data.aug.mosaic=0"]
# one epoch; the scoring is fourm21-eval's
FIT = ["trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1", "evaluate=false", "plots=false"]
# the triangle, square and box of each image: normalised polygons (YOLO-seg) of classes 0, 1, 2
SHAPES = [(0, [(0.1, 0.2), (0.4, 0.2), (0.25, 0.7)]), (1, [(0.5, 0.5), (0.9, 0.5), (0.9, 0.9), (0.5, 0.9)]),
          (2, [(0.55, 0.05), (0.95, 0.05), (0.95, 0.4), (0.55, 0.4)])]


def coco128_seg_like(root: Path, n: int = 6, w: int = 64, h: int = 48) -> Path:
    """coco128-seg as downloaded: images/train2017, labels/train2017 (polygons), its yaml in the folder with
    ``path`` relative to ultralytics' datasets folder, names as a dict, val = train."""
    ds = root / "coco128-seg"
    (ds / "images" / "train2017").mkdir(parents=True)
    (ds / "labels" / "train2017").mkdir(parents=True)
    for i in range(n):
        im = Image.new("RGB", (w, h), (20 * i, 40, 60))
        draw = ImageDraw.Draw(im)
        lines = []
        for k, (cls, pts) in enumerate(SHAPES[: 1 + i % 3]):
            draw.polygon([(x * w, y * h) for x, y in pts], fill=((90, 200, 250)[k], 255 - 60 * k, 40 * k))
            lines.append(" ".join([str(cls), *(f"{v:.4f}" for p in pts for v in p)]))
        im.save(ds / "images" / "train2017" / f"{i:012d}.jpg")
        (ds / "labels" / "train2017" / f"{i:012d}.txt").write_text("\n".join(lines) + "\n")
    (ds / "coco128-seg.yaml").write_text(yaml.safe_dump(
        {"path": "../datasets/coco128-seg", "train": "images/train2017", "val": "images/train2017",
         "names": {0: "person", 1: "bicycle", 2: "car"}}))
    return ds


def score_with_pycocotools(report: dict, ann_file: Path, predictions: Path) -> None:
    """report.json's COCO numbers are pycocotools' own on the eval's predictions (as for coco-mini)."""
    gt = COCO(str(ann_file))
    for iou_type, task in (("bbox", "det"), ("segm", "inst")):
        assert {f"val/{task}/{k}" for k in STAT_NAMES} <= set(report)
        results = json.loads((predictions / f"{iou_type}.json").read_text())
        if not results:  # one epoch may keep nothing above the score threshold
            assert report[f"val/{task}/map"] == 0.0
            continue
        assert {r["category_id"] for r in results} <= set(gt.getCatIds())
        ref = COCOeval(gt, gt.loadRes(str(predictions / f"{iou_type}.json")), iou_type)
        ref.params.imgIds = sorted(gt.getImgIds())
        ref.evaluate()
        ref.accumulate()
        ref.summarize()
        for name, value in zip(STAT_NAMES, ref.stats):
            assert report[f"val/{task}/{name}"] == pytest.approx(max(value, 0.0), abs=1e-12), name


def stamp_mtime(out: Path) -> int:
    return (out / STAMP).stat().st_mtime_ns


def train(tmp_path: Path, data: list[str]) -> Path:
    """fourm21-train for one epoch; its run dir."""
    res = run_cli("fourm21-train", [*data, f"paths.data_dir={tmp_path / 'data'}", *NET, *FIT,
                                    f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    return tmp_path / "run"


def evaluate(tmp_path: Path, data: list[str]) -> tuple[Path, str]:
    """fourm21-eval on the training run's last checkpoint; (its run dir, its stdout)."""
    res = run_cli("fourm21-eval", [*data, f"paths.data_dir={tmp_path / 'data'}",
                                   f"ckpt_path={tmp_path / 'run/checkpoints/last.ckpt'}", "plots=false",
                                   f"hydra.run.dir={tmp_path / 'eval'}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    return tmp_path / "eval", res.stdout


def test_yolo_seg_folder_trains_evaluates_and_reuses_its_cache(tmp_path):
    src = coco128_seg_like(tmp_path / "datasets")
    out = cached.cache_path("yolo", src, tmp_path / "data" / "converted")
    data = [*DENSE, "data=yolo", f"data.root={src}"]
    run = train(tmp_path, data)
    cfg = OmegaConf.load(run / "config.yaml")
    assert cfg.data.num_classes == 3 and cfg.model.heads.det.num_classes == 3  # data.yaml's names
    stamp = json.loads((out / STAMP).read_text())
    assert stamp["complete"] and stamp["categories"] == ["person", "bicycle", "car"]
    assert stamp["splits"]["train"]["masks"] == 12  # 1 + 2 + 3 polygons, twice
    converted = stamp_mtime(out)
    ev, eval_out = evaluate(tmp_path, data)
    # the second run (the eval) found the training run's conversion: not converted again
    assert "converting yolo data" not in eval_out and stamp_mtime(out) == converted
    report = json.loads((ev / "report.json").read_text())
    assert {"val/det/map", "val/inst/map"} <= set(report)
    score_with_pycocotools(report, out / "annotations/instances_val2017.json", ev / "predictions")


def test_the_cache_is_kept_until_the_labels_or_options_change(tmp_path):
    src = coco128_seg_like(tmp_path / "datasets", n=2)
    cache = tmp_path / "cache"
    out = cached.ensure_converted("yolo", src, cache)
    first = stamp_mtime(out)
    cached._FRESH.clear()  # as a new process
    assert cached.ensure_converted("yolo", src, cache) == out and stamp_mtime(out) == first
    cached._FRESH.clear()
    label = src / "labels" / "train2017" / "000000000000.txt"
    label.write_text(label.read_text() + "2 0.6 0.6 0.7 0.6 0.7 0.7\n")  # one more object
    cached.ensure_converted("yolo", src, cache)  # converted again
    assert json.loads((out / STAMP).read_text())["splits"]["train"]["annotations"] == 4
    cached.ensure_converted("yolo", src, cache, names=["a", "b", "c"])  # another option: converted again
    assert json.loads((out / STAMP).read_text())["categories"] == ["a", "b", "c"]
    yaml_file = src / "coco128-seg.yaml"  # data.yaml=PATH: its own cache folder
    assert cached.ensure_converted("yolo", None, cache, yaml_file=yaml_file) != out


@pytest.mark.slow  # the VOC reader: tests/data/formats; the cached-conversion training path: the YOLO test
def test_voc_folder_trains_and_evaluates(tmp_path):
    src = voc_like(tmp_path / "voc")
    out = cached.cache_path("voc", src, tmp_path / "data" / "converted")
    data = [*DENSE, "data=voc", f"data.root={src}"]
    run = train(tmp_path, data)
    cfg = OmegaConf.load(run / "config.yaml")
    assert cfg.data.num_classes == 20 and cfg.model.heads.sem.num_classes == 20  # the VOC classes
    ev, _ = evaluate(tmp_path, data)
    report = json.loads((ev / "report.json").read_text())
    assert {"val/det/map", "val/inst/map", "val/sem/miou"} <= set(report)
    assert (out / "semantic_val2017").is_dir()  # c has a SegmentationClass map: the semantic head's targets
    score_with_pycocotools(report, out / "annotations/instances_val2017.json", ev / "predictions")


@pytest.mark.slow  # the ImageFolder data set and experiment are covered by tests/data/test_image_folder.py
def test_imagefolder_trains_and_evaluates(tmp_path):
    src = tree(tmp_path / "tree", per_class=2)
    data = ["experiment=image_folder", "data=imagefolder", f"data.root={src}", "data.img_size=32",
            "data.datamodule.batch_size=3"]
    run = train(tmp_path, data)
    cfg = OmegaConf.load(run / "config.yaml")
    assert cfg.data.num_image_classes == 3 and cfg.model.heads.cls.num_classes == 3
    ev, _ = evaluate(tmp_path, data)
    report = json.loads((ev / "report.json").read_text())
    assert 0.0 <= report["val/cls/acc"] <= 1.0 and not any(k.startswith("val/det") for k in report)


def test_a_missing_source_is_one_line(tmp_path):
    res = run_cli_here("fourm21-train", ["data=yolo", "model.heads.cls.enabled=false",
                                         f"data.root={tmp_path / 'nowhere'}", f"paths.data_dir={tmp_path / 'data'}",
                                         f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "data.root" in res.stderr and "nowhere" in res.stderr
