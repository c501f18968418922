"""experiment=cifar10 / coco / mixed from the command line, on tiny data made here or on ../shared/data."""

import json
import shutil
from pathlib import Path

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from fourm21.metrics.coco import STAT_NAMES
from tests.conftest import SHARED_DATA, assert_trained
from tests.conftest import run_cli as _run
from tests.data.test_cifar10 import make_cifar_tree

TINY_NET = ["+model.backbone.dims=[16,32,48,64]", "+model.backbone.depths=[1,1,1,1]", "model.neck.channels=32",
            "trainer.enable_model_summary=false", "data.datamodule.num_workers=0"]
COCO_MINI = SHARED_DATA / "coco-mini"


def make_coco_layout(shapes_root: Path, dest: Path) -> Path:
    """The shapes set rearranged into the official COCO 2017 layout (train2017/, val2017/, annotations/)."""
    for split in ("train", "val"):
        data = json.loads((shapes_root / f"annotations/instances_{split}.json").read_text())
        (dest / f"{split}2017").mkdir(parents=True, exist_ok=True)
        for im in data["images"]:
            name = Path(im["file_name"]).name
            shutil.copy(shapes_root / "images" / im["file_name"], dest / f"{split}2017" / name)
            im["file_name"] = name
            im.pop("label", None)  # plain COCO has no image-level class
        data.pop("image_categories")
        (dest / "annotations").mkdir(exist_ok=True)
        (dest / f"annotations/instances_{split}2017.json").write_text(json.dumps(data))
    return dest


def test_cifar10_experiment(tmp_path):
    root = make_cifar_tree(tmp_path / "cifar", per_class=3)
    res = _run("fourm21-train", ["experiment=cifar10", f"data.root={root}", "data.holdout=10",
                                 "data.datamodule.batch_size=8", "trainer.max_epochs=2",
                                 "trainer.check_val_every_n_epoch=1", *TINY_NET, f"hydra.run.dir={tmp_path / 'run'}"],
               tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((tmp_path / "run/report.json").read_text())
    assert {"val/cls/acc", "val/cls/precision_macro", "val/cls/recall_macro", "val/cls/f1_macro"} <= set(report)
    assert_trained(tmp_path / "run")
    assert not any(k.startswith("val/det") for k in report)
    md = (tmp_path / "run/report.md").read_text()
    assert "Per-class classification" in md and "| airplane |" in md
    assert (tmp_path / "run/confusion_matrix.png").is_file() and (tmp_path / "run/pr_curves.png").is_file()


def test_mixed_experiment_trains_every_head_from_two_data_sets(tmp_path, shapes_root):
    cifar = make_cifar_tree(tmp_path / "cifar", per_class=3)
    coco = make_coco_layout(shapes_root, tmp_path / "coco")
    res = _run("fourm21-train", ["experiment=mixed", f"data.root={coco}", f"data.cifar10_root={cifar}",
                                 "data.num_classes=3", "data.img_size=64", "data.datamodule.batch_size.coco=8",
                                 "data.datamodule.batch_size.cifar10=8", "data.batches_per_epoch=6",
                                 "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=1", *TINY_NET,
                                 f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((tmp_path / "run/report.json").read_text())
    # classification is scored on CIFAR-10, boxes/masks/semantic on the COCO-format set
    for key in ("val/cls/acc", "val/det/map", "val/inst/map", "val/sem/miou", "train/loss"):
        assert key in report, key
    assert_trained(tmp_path / "run", factor=0.98)  # 6 mixed batches an epoch: -4.7 % measured
    rows = (tmp_path / "run/logs/metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert "train/cls/loss_epoch" in header and "train/det/loss_epoch" in header
    assert (tmp_path / "run/predictions/coco_bbox.json").is_file()


@pytest.mark.skipif(not COCO_MINI.is_dir(), reason=f"real COCO subset not present at {COCO_MINI}")
def test_coco_experiment_and_eval_on_coco_mini(tmp_path):
    common = [f"data.root={COCO_MINI}", "data.img_size=128", "data.datamodule.batch_size=8",
              "data.datamodule.num_workers=0"]
    res = _run("fourm21-train", ["experiment=coco", *common, *TINY_NET, "trainer.max_epochs=1",
                                 "trainer.check_val_every_n_epoch=1", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = tmp_path / "run/checkpoints/last.ckpt"
    res = _run("fourm21-eval", ["experiment=coco", f"ckpt_path={ckpt}", *common, "stage=test",
                                f"hydra.run.dir={tmp_path / 'eval'}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((tmp_path / "eval/report.json").read_text())
    ann = COCO_MINI / "annotations/instances_val2017.json"
    gt = COCO(str(ann))
    for iou_type, task in (("bbox", "det"), ("segm", "inst")):
        assert {f"test/{task}/{k}" for k in STAT_NAMES} <= set(report)
        path = tmp_path / f"eval/predictions/{iou_type}.json"
        results = json.loads(path.read_text())
        if not results:  # an untrained model may keep nothing above the score threshold
            assert report[f"test/{task}/map"] == 0.0
            continue
        assert {r["category_id"] for r in results} <= set(gt.getCatIds())  # original COCO ids, not 0..79
        ref = COCOeval(gt, gt.loadRes(str(path)), iou_type)
        ref.params.imgIds = sorted(gt.getImgIds())
        ref.evaluate()
        ref.accumulate()
        ref.summarize()
        for name, value in zip(STAT_NAMES, ref.stats):
            assert report[f"test/{task}/{name}"] == pytest.approx(max(value, 0.0), abs=1e-12), name


def _csv_args(shapes_root, kind):
    return [f"data.csv={shapes_root / f'{kind}_train.csv'}", f"data.val_csv={shapes_root / f'{kind}_val.csv'}",
            f"data.image_dir={shapes_root / 'images'}", "data.datamodule.prepare=null", "data.datamodule.batch_size=8",
            "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=1", *TINY_NET]


def test_attributes_experiment_heads_follow_the_groups_line(tmp_path, shapes_root):
    res = _run("fourm21-train", ["experiment=attributes", *_csv_args(shapes_root, "attributes"),
                                 "data.groups=[scene,count]", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((tmp_path / "run/report.json").read_text())
    for g in ("scene", "count"):
        assert f"val/attr.{g}/acc" in report and f"val/attr.{g}/f1_macro" in report
    assert "val/attr.main_shape/acc" not in report
    assert {"val/attr/acc_mean", "val/attr/f1_macro_mean"} <= set(report)
    assert_trained(tmp_path / "run")


def test_multilabel_captions_experiment_stores_tuned_thresholds(tmp_path, shapes_root):
    import torch

    import fourm21
    res = _run("fourm21-train", ["experiment=multilabel_captions", *_csv_args(shapes_root, "multilabel"),
                                 f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((tmp_path / "run/report.json").read_text())
    for key in ("f1_micro", "f1_macro", "f1_samples", "map", "threshold_mean"):
        assert f"val/mlc/{key}" in report
    assert_trained(tmp_path / "run")
    model = fourm21.load(tmp_path / "run/checkpoints/best.ckpt")
    thresholds = model.net.heads["mlc"].thresholds
    assert float(thresholds.mean()) == pytest.approx(report["val/mlc/threshold_mean"], abs=1e-6)
    image = shapes_root / "images/val/val_000000.png"
    pred = model.predict([image], captions=["two shapes on a desert background"])[0]
    assert torch.equal(pred["label_set"], pred["label_probs"] > thresholds)  # predict uses the tuned thresholds
    assert model.label_names == ["1", "2", "3", "5", "6"]
    # evaluating another split scores at the checkpoint's thresholds: nothing is tuned on the split reported
    # (the train CSV stands in for a test split: other images, whose own best thresholds differ)
    data_args = [a for a in _csv_args(shapes_root, "multilabel") if a.startswith("data.") and "val_csv" not in a]
    res = _run("fourm21-eval", ["experiment=multilabel_captions", *data_args,
                                f"data.val_csv={shapes_root / 'multilabel_train.csv'}",
                                f"ckpt_path={tmp_path / 'run/checkpoints/best.ckpt'}", "stage=test", "plots=false",
                                f"hydra.run.dir={tmp_path / 'eval'}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    scored = json.loads((tmp_path / "eval/report.json").read_text())
    assert scored["test/mlc/threshold_mean"] == pytest.approx(float(thresholds.mean()), abs=1e-6)
