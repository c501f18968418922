"""YOLO-pose labels (data.yaml's kpt_shape) -> COCO keypoints: values in pixels, categories, errors, the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from pycocotools.coco import COCO

from fourm21.data.formats import cached, convert
from fourm21.errors import DatasetError
from tests.data.formats.helpers import run_convert, write_image

W, H = 64, 48  # write_image's size: normalised 0.25 is 16 px across, 12 px down

# K = 3 points of (x, y, v): v 2 visible, 1 occluded, 0 not labelled (its x y are dropped); 1.0 is 1, 3 is 2, 0.5 is 1
POSE3 = {
    "train/a": ["0 0.5 0.5 0.5 0.5 0.25 0.5 2 0.5 0.25 1 0 0 0",
                "1 0.25 0.25 0.25 0.25 0.125 0.125 1.0 0.75 0.75 2.0 0.5 0.5 0",
                "0 0.5 0.5 1 1 0.1 0.1 3 0.2 0.2 0.5 1 1 2"],
    "val/c": ["0 0.5 0.5 0.5 0.5 0 0 0 0 0 0 0.5 0.5 2"],
}


def pose_like(root: Path, labels: dict[str, list[str]] | None = None, **yaml_keys) -> Path:
    """An ultralytics pose folder: images/{train,val}/*.png (train/b.png without labels), labels/..., data.yaml
    with kpt_shape [3, 3], per-class kpt_names for class 0 only, a COCO skeleton and a flip_idx."""
    ds = root / "pose"
    for i, name in enumerate(("train/a", "train/b", "val/c")):
        write_image(ds / "images" / f"{name}.png", w=W, h=H, value=i)
    for name, lines in (POSE3 if labels is None else labels).items():
        (ds / "labels" / f"{name}.txt").parent.mkdir(parents=True, exist_ok=True)
        (ds / "labels" / f"{name}.txt").write_text("\n".join(lines) + "\n")
    cfg = {"train": "images/train", "val": "images/val", "names": {0: "person", 1: "dog"}, "kpt_shape": [3, 3],
           "flip_idx": [0, 2, 1], "kpt_names": {0: ["nose", "left_eye", "right_eye"]}, "skeleton": [[1, 2], [1, 3]]}
    cfg.update(yaml_keys)
    (ds / "data.yaml").write_text(yaml.safe_dump({k: v for k, v in cfg.items() if v is not None}))
    return ds


def coco_json(out: Path, split: str = "train") -> dict:
    return json.loads((out / "annotations" / f"instances_{split}2017.json").read_text())


def test_pose_labels_become_coco_keypoints_in_pixels(tmp_path):
    summary = convert("yolo", pose_like(tmp_path), tmp_path / "out")
    assert summary["splits"]["train"]["keypoints"] == 3 and summary["splits"]["val"]["keypoints"] == 1
    assert summary["splits"]["train"]["masks"] == 0  # boxes with keypoints: no polygon, as box-only labels
    data = coco_json(tmp_path / "out")
    anns = data["annotations"]
    assert [a["keypoints"] for a in anns] == [
        [16.0, 24.0, 2, 32.0, 12.0, 1, 0.0, 0.0, 0],
        [8.0, 6.0, 1, 48.0, 36.0, 2, 0.0, 0.0, 0],  # v 0 at (0.5, 0.5): written as COCO's (0, 0)
        [6.4, 4.8, 2, 12.8, 9.6, 1, 64.0, 48.0, 2],
    ]
    assert [a["num_keypoints"] for a in anns] == [2, 2, 3]
    assert all(isinstance(v, int) for a in anns for v in a["keypoints"][2::3])
    assert [a["bbox"] for a in anns] == [[16.0, 12.0, 32.0, 24.0], [8.0, 6.0, 16.0, 12.0], [0.0, 0.0, 64.0, 48.0]]
    assert [a["category_id"] for a in anns] == [1, 2, 1]
    assert anns[0]["segmentation"] == [] and anns[0]["area"] == 768.0 and anns[0]["iscrowd"] == 0
    assert data["categories"] == [
        {"id": 1, "name": "person", "supercategory": "", "keypoints": ["nose", "left_eye", "right_eye"],
         "skeleton": [[1, 2], [1, 3]], "flip_idx": [0, 2, 1]},
        {"id": 2, "name": "dog", "supercategory": "", "keypoints": ["0", "1", "2"],  # no kpt_names for class 1
         "skeleton": [[1, 2], [1, 3]], "flip_idx": [0, 2, 1]},
    ]
    val = coco_json(tmp_path / "out", "val")["annotations"]
    assert val[0]["keypoints"] == [0.0, 0.0, 0, 0.0, 0.0, 0, 32.0, 24.0, 2] and val[0]["num_keypoints"] == 1
    coco = COCO(str(tmp_path / "out" / "annotations" / "instances_train2017.json"))  # pycocotools reads it
    assert coco.loadCats(1)[0]["keypoints"] == ["nose", "left_eye", "right_eye"]


def test_two_value_points_plain_kpt_names_no_flip_idx(tmp_path):
    labels = {"train/a": ["0 0.5 0.5 0.5 0.5 0.1 0.2 0 0 0.3 0.4 1 1 0.5 0.5"], "val/c": []}
    ds = pose_like(tmp_path, labels, kpt_shape=[5, 2], kpt_names=list("abcde"), flip_idx=None, skeleton=None)
    convert("yolo", ds, tmp_path / "out")
    data = coco_json(tmp_path / "out")
    (ann,) = data["annotations"]
    # no visibility: a point is visible (2) unless it is (0, 0), ultralytics' "not labelled"
    assert ann["keypoints"] == [6.4, 9.6, 2, 0.0, 0.0, 0, 19.2, 19.2, 2, 64.0, 48.0, 2, 32.0, 24.0, 2]
    assert ann["num_keypoints"] == 4
    for cat in data["categories"]:
        assert cat["keypoints"] == ["a", "b", "c", "d", "e"] and cat["skeleton"] == [] and "flip_idx" not in cat


def test_without_kpt_shape_nothing_changes(tmp_path):
    labels = {"train/a": ["0 0.5 0.5 0.5 0.5"], "val/c": []}
    convert("yolo", pose_like(tmp_path, labels, kpt_shape=None), tmp_path / "out")
    data = coco_json(tmp_path / "out")
    assert "keypoints" not in data["annotations"][0] and "num_keypoints" not in data["annotations"][0]
    assert data["categories"][0] == {"id": 1, "name": "person", "supercategory": ""}


@pytest.mark.parametrize("line, message", [
    ("0 0.5 0.5 0.5 0.5 0.1 0.1 2 0.2 0.2 2", r"11 fields; with data.yaml's kpt_shape \[3, 3\] .* \(14 fields\)"),
    ("0 0.5 0.5 0.5 0.5 0.1 0.1 0.2 0.2 0.3 0.3", "11 fields"),  # D = 2 points under kpt_shape [3, 3]
    ("0 0.5 0.5 0.5 0.5 32 24 2 0.2 0.2 2 0 0 0", "keypoint 0 coordinate 32 is not normalised"),
    ("0 0.5 0.5 0.5 0.5 0.1 0.1 2 0.2 0.2 nan 0 0 0", "keypoint 1 visibility nan"),
])
def test_bad_pose_lines_name_file_and_line(tmp_path, line, message):
    ds = pose_like(tmp_path, {"train/a": [POSE3["train/a"][0], line], "val/c": []})
    with pytest.raises(DatasetError, match=message) as e:
        convert("yolo", ds, tmp_path / "out")
    assert f"{Path('train') / 'a.txt'}:2: " in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()  # nothing written before the labels are read


@pytest.mark.parametrize("keys, message", [
    ({"flip_idx": [0, 1]}, "flip_idx: must list each keypoint 0..2 once"),
    ({"flip_idx": [0, 1, 1]}, "flip_idx"),
    ({"flip_idx": [1, 2, 3]}, "flip_idx"),
    ({"flip_idx": "0 2 1"}, "flip_idx"),
    ({"kpt_shape": [3, 4]}, "kpt_shape: must be"),
    ({"kpt_shape": [17]}, "kpt_shape"),
    ({"kpt_names": ["nose", "eye"]}, "kpt_names: needs a list of 3 keypoint names"),
    ({"kpt_names": {5: ["a", "b", "c"]}}, "kpt_names: key 5 is not a class id"),
    ({"skeleton": [[0, 1]]}, "skeleton: .*1-based"),
])
def test_bad_pose_keys_name_data_yaml_and_key(tmp_path, keys, message):
    ds = pose_like(tmp_path, **keys)
    with pytest.raises(DatasetError, match=message) as e:
        convert("yolo", ds, tmp_path / "out")
    assert str(e.value).startswith(f"{ds / 'data.yaml'}: ") and "\n" not in str(e.value)


def test_the_cache_converts_again_when_data_yaml_pose_keys_change(tmp_path):
    ds = pose_like(tmp_path)
    out = cached.ensure_converted("yolo", ds, tmp_path / "cache")
    assert coco_json(out)["categories"][0]["flip_idx"] == [0, 2, 1]
    yaml_file = ds / "data.yaml"
    st = yaml_file.stat()
    yaml_file.write_text(yaml_file.read_text().replace("- 0\n- 2\n- 1\n", "- 0\n- 1\n- 2\n"))
    os.utime(yaml_file, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: only its contents tell
    assert yaml_file.stat().st_size == st.st_size
    cached._FRESH.clear()  # as a new process
    assert cached.ensure_converted("yolo", ds, tmp_path / "cache") == out
    assert coco_json(out)["categories"][0]["flip_idx"] == [0, 1, 2]


def test_convert_command_on_pose_data(tmp_path):
    res = run_convert(["format=yolo", f"src={pose_like(tmp_path)}", f"out={tmp_path / 'out'}"], tmp_path,
                      here=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "keypoints: objects with labelled keypoints: train 3, val 1" in res.stdout
    report = json.loads((tmp_path / "run" / "convert_report.json").read_text())
    assert report["splits"]["train"]["keypoints"] == 3
    assert coco_json(tmp_path / "out")["annotations"][0]["num_keypoints"] == 2
