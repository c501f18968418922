"""fourm21-data check / show on the tiny shapes set: the printed and saved counts are the annotation files',
the label problems are those training repairs, the pictures are written; a bad key is one line and exit 2."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.conftest import BIN, run_cli, run_cli_here


def data_cli(args: list[str], cwd: Path, here: bool = False) -> subprocess.CompletedProcess:
    """``fourm21-data ...`` as a user types it (``python -m fourm21.engine.data_tools`` until it is installed);
    ``here``: in this process, for runs that stop at an error."""
    if here:
        return run_cli_here("fourm21-data", args, cwd)
    if (BIN / "fourm21-data").exists():
        return run_cli("fourm21-data", args, cwd)
    return subprocess.run([sys.executable, "-m", "fourm21.engine.data_tools", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def table_rows(stdout: str) -> dict[str, list[str]]:
    """The printed tables' rows, by their first cell."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in re.split(r"[│|┃]", line)[1:-1]]
        if len(cells) >= 2 and cells[0]:
            rows.setdefault(cells[0], cells[1:])
    return rows


def expected(ann_file: Path) -> dict:
    """What check must report for one split, read straight from the COCO file: boxes with a positive size
    (check_coco drops the others, as training does), crowd regions apart."""
    data = json.loads(ann_file.read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    kept = [a for a in data["annotations"] if not a.get("iscrowd") and a["bbox"][2] > 0 and a["bbox"][3] > 0]
    with_boxes = {a["image_id"] for a in kept}
    per_class = Counter(names[a["category_id"]] for a in kept)
    return {"images": len(data["images"]), "instances": len(kept),
            "empty_images": sum(im["id"] not in with_boxes for im in data["images"]),
            "per_class": {n: per_class.get(n, 0) for n in names.values()}}


def test_check_counts_problems_and_plots(tmp_path, shapes_root):
    root = tmp_path / "shapes"
    shutil.copytree(shapes_root, root)
    train_ann, val_ann = root / "annotations/instances_train.json", root / "annotations/instances_val.json"
    train = json.loads(train_ann.read_text())
    train["annotations"][0]["bbox"][0] = -3.0  # partly outside the image (every box is 12+ px wide): clipped
    train["annotations"][1]["iscrowd"] = 1  # a crowd region: no training target
    train_ann.write_text(json.dumps(train))
    val = json.loads(val_ann.read_text())
    val["annotations"][0]["bbox"][2] = 0  # an empty box: dropped
    val_ann.write_text(json.dumps(val))
    (root / "images" / train["images"][3]["file_name"]).write_bytes(b"not a PNG")  # found by decode=true
    run_dir = tmp_path / "run"
    res = data_cli(["check", f"data.root={root}", "data.datamodule.prepare=null", "decode=true",
                    f"hydra.run.dir={run_dir}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((run_dir / "data_report.json").read_text())
    rows = table_rows(res.stdout)
    for split, ann in (("train", train_ann), ("val", val_ann)):
        want = expected(ann)
        got = report[split]
        assert {k: got[k] for k in want} == want, split
        assert rows[split][:3] == [str(want["images"]), str(want["instances"]), str(want["empty_images"])]
    for name in expected(train_ann)["per_class"]:  # the per-class table: one column per split
        assert rows[name][:2] == [str(report["train"]["per_class"][name]), str(report["val"]["per_class"][name])]
    assert report["train"]["crowd"] == 1
    assert report["train"]["problems"] == {"clipped_bbox": 1, "unreadable_image": 1}
    assert report["val"]["problems"] == {"empty_bbox": 1}
    assert sum(report["train"]["image_classes"].values()) == report["train"]["images"]  # the scene of every image
    (line,) = [ln for ln in res.stdout.splitlines() if "clipped_bbox" in ln]  # the problems table names the file
    assert [c.strip() for c in re.split(r"[│|]", line)[1:4]] == ["train", "clipped_bbox", "1"]
    assert "instances_train.json: bboxes partly" in line
    assert "skipped_images 1, data/annotations_dropped 1, data/annotations_repaired 1" in " ".join(res.stdout.split())
    assert (run_dir / "skipped_images.tsv").read_text().count("\n") == 2
    for name in ("data_classes", "data_boxes", "data_per_image"):
        with Image.open(run_dir / f"{name}.png") as im:
            assert im.width > 300 and im.height > 200, name


def test_show_draws_augmented_ground_truth(tmp_path, shapes_root):
    run_dir = tmp_path / "run"
    res = data_cli(["show", "augment=true", "n=5", f"data.root={shapes_root}", "data.datamodule.prepare=null",
                    f"hydra.run.dir={run_dir}"], tmp_path, here=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "5 train samples of data=shapes (after the training augmentation)" in res.stdout
    with Image.open(run_dir / "show.png") as im:  # 2 rows of 4 samples, each an image and its semantic map
        assert im.width == pytest.approx(2 * im.height * 4 / 3.4 * 3 / 2, rel=0.02)


def test_a_bad_key_or_command_is_one_line_and_exit_2(tmp_path, shapes_root, capsys, monkeypatch):
    res = data_cli(["show", "split=test", f"data.root={shapes_root}", "data.datamodule.prepare=null",
                    f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, here=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == ["fourm21: ConfigError: split: must be train or val, got 'test'"]
    from fourm21.engine import data_tools
    monkeypatch.setattr(sys, "argv", ["fourm21-data", "chek", "n=3"])
    with pytest.raises(SystemExit) as e:
        data_tools.main()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("fourm21: ConfigError: unknown command 'chek'; use fourm21-data check|show")


def test_ground_truth_is_drawn_at_the_image_size(shapes_root, tmp_path):
    from fourm21.data.coco import CocoDataset
    from fourm21.data.csv_labels import AttributeDataset
    from fourm21.data.transforms import build_classification_transform, build_dense_transform
    from fourm21.engine.data_tools import ground_truth, label_lines, plot_ground_truth

    ds = CocoDataset(shapes_root / "images", shapes_root / "annotations/instances_val.json",
                     transform=build_dense_transform(64, train=False), mask_stride=2)
    sample = ds[0]
    assert sample["masks"].shape[-2:] == (32, 32)  # the loss resolution
    gt = ground_truth(sample)
    assert gt["masks"].shape == (len(sample["boxes"]), 64, 64) and gt["masks"].dtype == torch.bool
    for mask, box in zip(gt["masks"], gt["boxes"]):  # the enlarged masks lie in their boxes
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert xs.min() >= box[0] - 2 and xs.max() <= box[2] + 2 and ys.min() >= box[1] - 2 and ys.max() <= box[3] + 2
    attrs = AttributeDataset(shapes_root / "attributes_val.csv", shapes_root / "images",
                             transform=build_classification_transform(64, train=False))
    lines = label_lines(attrs[0], attrs)
    assert [line.split(":")[0] for line in lines] == ["scene", "main_shape", "count"]
    out = plot_ground_truth([(sample, ds), (attrs[0], attrs)], tmp_path / "grid.png")
    assert out.is_file()


def test_check_on_a_yolo_folder_converts_it_and_counts_its_labels(tmp_path):
    from tests.data.test_data_formats_train import coco128_seg_like

    src = coco128_seg_like(tmp_path / "datasets", n=3)  # 1, 2 and 3 objects: person; person, bicycle; all three
    run_dir = tmp_path / "run"
    res = data_cli(["check", "data=yolo", f"data.root={src}", f"paths.data_dir={tmp_path / 'data'}",
                    f"hydra.run.dir={run_dir}"], tmp_path, here=True)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((run_dir / "data_report.json").read_text())
    for split in ("train", "val"):  # coco128's val is its train folder
        assert {k: report[split][k] for k in ("images", "instances", "empty_images")} == \
            {"images": 3, "instances": 6, "empty_images": 0}
        assert report[split]["per_class"] == {"person": 3, "bicycle": 2, "car": 1}
    assert table_rows(res.stdout)["train"][:3] == ["3", "6", "0"]
    assert (run_dir / "data_boxes.png").is_file()
