"""YOLO txt (ultralytics layout) -> COCO, read back through the project's COCO reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from fourm21.data.formats import convert
from fourm21.data.formats.yolo import label_path
from fourm21.errors import DatasetError
from tests.data.formats.helpers import read_back, sample_of, write_image


def coco128_like(root: Path, seg: bool = False) -> Path:
    """The coco128(-seg) layout as downloaded, with its yaml (names as a dict, ``path`` relative to
    ultralytics' own datasets folder, val = train) copied into the folder."""
    ds = root / "coco128"
    for i in range(3):
        write_image(ds / "images" / "train2017" / f"00000{i}.jpg", value=i)
    (ds / "labels" / "train2017").mkdir(parents=True)
    if seg:  # a triangle and a square, normalised (image 64 x 48)
        lines = ["0 0.25 0.25 0.5 0.25 0.5 0.75", "2 0.5 0.5 0.75 0.5 0.75 0.75 0.5 0.75"]
    else:  # boxes: x 8..24 y 12..36 ; x 32..48 y 24..36
        lines = ["0 0.25 0.5 0.25 0.5", "2 0.625 0.625 0.25 0.25"]
    (ds / "labels" / "train2017" / "000000.txt").write_text("\n".join(lines) + "\n")
    (ds / "labels" / "train2017" / "000001.txt").write_text("")  # a background image
    # 000002 has no label file at all: kept, without objects
    names = {0: "person", 1: "bicycle", 2: "car"}
    (ds / "coco128.yaml").write_text(yaml.safe_dump({"path": "../datasets/coco128", "train": "images/train2017",
                                                     "val": "images/train2017", "names": names}))
    return ds


def test_coco128_detection_layout_as_is(tmp_path):
    summary = convert("yolo", coco128_like(tmp_path), tmp_path / "out")
    assert summary["categories"] == ["person", "bicycle", "car"]
    assert summary["notes"] == {"images without a label file (kept, without objects)": 2}  # train and val
    for split in ("train", "val"):
        ds = read_back(tmp_path / "out", split)
        assert len(ds) == 3
        assert ds.class_names == ["person", "bicycle", "car"] and ds.cat_ids == [1, 2, 3]
        s = sample_of(ds, "000000.jpg")
        np.testing.assert_allclose(s["boxes"].numpy(), [[8, 12, 24, 36], [32, 24, 48, 36]], atol=1)
        assert s["box_labels"].tolist() == [0, 2]
        assert len(sample_of(ds, "000001.jpg")["boxes"]) == 0
    ann = ds.coco.anns[1]
    assert ann["bbox"] == [8.0, 12.0, 16.0, 24.0] and ann["area"] == 384.0
    assert ann["segmentation"] == [[8.0, 12.0, 24.0, 12.0, 24.0, 36.0, 8.0, 36.0]]  # a box label: its box as the mask
    assert (tmp_path / "out" / "train2017" / "000000.jpg").is_symlink()


def test_coco128_seg_polygons_become_masks(tmp_path):
    summary = convert("yolo", coco128_like(tmp_path, seg=True), tmp_path / "out", images="copy")
    assert summary["splits"]["train"]["masks"] == 2
    ds = read_back(tmp_path / "out")
    assert ds.coco.anns[1]["segmentation"] == [[16.0, 12.0, 32.0, 12.0, 32.0, 36.0]]
    s = sample_of(ds, "000000.jpg")
    np.testing.assert_allclose(s["boxes"].numpy(), [[16, 12, 32, 36], [32, 24, 48, 36]], atol=1)
    square = s["masks"][1].numpy()
    assert square[26:34, 34:46].all() and not square[:20].any()  # filled inside, empty elsewhere
    assert not (tmp_path / "out" / "train2017" / "000000.jpg").is_symlink()


def test_names_list_txt_split_lists_and_pose_lines(tmp_path):
    ds = tmp_path / "data"
    for split in ("train", "val"):
        write_image(ds / "images" / split / "a.png", value=1)
        write_image(ds / "images" / split / "b.png", value=2)
        (ds / "labels" / split).mkdir(parents=True)
        # pose: box + 2 keypoints of (x, y, visible); the keypoints are not objects
        (ds / "labels" / split / "a.txt").write_text("1 0.5 0.5 0.5 0.5 0.1 0.1 2 0.2 0.2 2\n")
    (ds / "train.txt").write_text("./images/train/a.png\n./images/train/b.png\n")
    (ds / "data.yaml").write_text(yaml.safe_dump({"train": "train.txt", "val": "images/val", "names": ["x", "y"],
                                                  "kpt_shape": [2, 3]}))
    convert("yolo", ds, tmp_path / "out")
    train = read_back(tmp_path / "out")
    assert sorted(i["file_name"] for i in train.coco.imgs.values()) == ["train/a.png", "train/b.png"]
    assert train.class_names == ["x", "y"]
    assert sample_of(train, "train/a.png")["box_labels"].tolist() == [1]
    assert len(read_back(tmp_path / "out", "val")) == 2


def test_label_path_follows_the_last_images_folder():
    assert label_path(Path("/d/images/train/x.jpg")) == Path("/d/labels/train/x.txt")
    assert label_path(Path("/images/d/images/x.png")) == Path("/images/d/labels/x.txt")
    assert label_path(Path("/d/pics/x.jpg")) == Path("/d/pics/x.txt")


@pytest.mark.parametrize("line, message", [
    ("0 0.5 0.5 0.2", "4 fields"),
    ("0 0.1 0.1 0.2 0.2 0.3", "6 fields"),
    ("3 0.5 0.5 0.2 0.2", "class id 3 out of range"),
    ("-1 0.5 0.5 0.2 0.2", "class id -1 out of range"),
    ("0 32 24 10 10", "not normalised"),
    ("zero 0.5 0.5 0.2 0.2", "not a list of numbers"),
])
def test_bad_label_lines_name_file_and_line(tmp_path, line, message):
    ds = coco128_like(tmp_path)
    (ds / "labels" / "train2017" / "000001.txt").write_text(f"\n{line}\n")
    with pytest.raises(DatasetError, match=message) as e:
        convert("yolo", ds, tmp_path / "out")
    assert "000001.txt:2" in str(e.value)
    assert not (tmp_path / "out").exists()  # nothing written before the labels are read


def test_bad_yaml_and_missing_split(tmp_path):
    ds = coco128_like(tmp_path)
    (ds / "coco128.yaml").write_text("names: [a, b\n")
    with pytest.raises(DatasetError, match="coco128.yaml: not valid YAML"):
        convert("yolo", ds, tmp_path / "out")
    (ds / "coco128.yaml").write_text(yaml.safe_dump({"train": "images/nope", "names": ["a"]}))
    with pytest.raises(DatasetError, match="train: images/nope not found"):
        convert("yolo", ds, tmp_path / "out")
    (ds / "coco128.yaml").write_text(yaml.safe_dump({"train": "images/train2017"}))
    with pytest.raises(DatasetError, match="names"):
        convert("yolo", ds, tmp_path / "out")


def test_an_image_listed_but_missing(tmp_path):
    ds = coco128_like(tmp_path)
    (ds / "list.txt").write_text("./images/train2017/000000.jpg\n./images/train2017/gone.jpg\n")
    (ds / "coco128.yaml").write_text(yaml.safe_dump({"train": "list.txt", "names": ["a", "b", "c"]}))
    with pytest.raises(DatasetError, match="gone.jpg: image not found"):
        convert("yolo", ds, tmp_path / "out")
    summary = convert("yolo", ds, tmp_path / "out", on_bad_image="skip", val_fraction=0)
    assert summary["splits"]["train"]["images"] == 1 and list(summary["skipped_images"]) == [
        str(ds / "images" / "train2017" / "gone.jpg")]
