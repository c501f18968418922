"""LabelMe JSON -> COCO, read back through the project's COCO reader."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fourm21.data.formats import convert
from fourm21.errors import ConfigError, DatasetError
from tests.data.formats.helpers import read_back, sample_of, write_image


def shape(label: str, points: list, kind: str = "polygon", group_id: int | None = None, **extra) -> dict:
    return {"label": label, "points": points, "shape_type": kind, "group_id": group_id, "flags": {}, **extra}


def write_json(path: Path, image: str, shapes: list[dict], w: int = 64, h: int = 48, image_data: str | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": image,
                                "imageData": image_data, "imageHeight": h, "imageWidth": w}))


def png_b64(array: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def labelme_like(root: Path) -> Path:
    """train/ with two annotated images (one embedded in its JSON), val/ with one."""
    write_image(root / "train" / "a.jpg", value=1)
    write_json(root / "train" / "a.json", "a.jpg", [
        shape("cat", [[8, 12], [24, 12], [24, 36], [8, 36]]),                 # a square polygon
        shape("dog", [[48, 36], [32, 24]], "rectangle"),                       # a box, corners in any order
        shape("cat", [[40, 4], [44, 4], [44, 8]], group_id=1),                 # two parts of one cat
        shape("cat", [[50, 4], [54, 4], [54, 8], [50, 8]], group_id=1),
        shape("tail", [[1, 1], [5, 5]], "line"),                               # not an object
    ])
    buf = io.BytesIO()
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(buf, format="PNG")
    bitmap = np.zeros((10, 10), np.uint8)
    bitmap[2:8, 2:8] = 255
    write_json(root / "train" / "sub" / "b.json", "b.png", [
        shape("dog", [[32, 24], [40, 32]], "circle"),                          # centre, a point on the circle
        shape("cat", [[0, 0], [9, 9]], "mask", mask=png_b64(bitmap)),          # LabelMe 5 bitmap in its box
    ], image_data=base64.b64encode(buf.getvalue()).decode())
    write_image(root / "val" / "c.jpg", value=3)
    # a path written on another machine: the image of that name beside the JSON
    write_json(root / "val" / "c.json", "C:\\Users\\me\\Pictures\\c.jpg", [shape("dog", [[4, 4], [20, 4], [20, 20]])])
    return root


def test_labelme_shapes_splits_and_embedded_images(tmp_path):
    summary = convert("labelme", labelme_like(tmp_path / "lm"), tmp_path / "out")
    assert summary["categories"] == ["cat", "dog"]
    assert summary["notes"] == {"labelme 'line' shapes left out (not objects)": 1}
    train = read_back(tmp_path / "out")
    assert len(train) == 2 and train.class_names == ["cat", "dog"] and train.cat_ids == [1, 2]
    a = sample_of(train, "a.jpg")
    assert a["box_labels"].tolist() == [0, 1, 0]
    np.testing.assert_allclose(a["boxes"].numpy(), [[8, 12, 24, 36], [32, 24, 48, 36], [40, 4, 54, 8]], atol=1)
    grouped = next(x for x in train.coco.anns.values() if x["bbox"][0] == 40)
    assert len(grouped["segmentation"]) == 2  # one object, two polygons
    rect = next(x for x in train.coco.anns.values() if x["category_id"] == 2 and x["image_id"] == 1)
    x, y, w, h = rect["bbox"]  # a rectangle is a box: the reader makes it the box's polygon (COCOeval's segm gt)
    assert rect["segmentation"] == [[x, y, x + w, y, x + w, y + h, x, y + h]]
    b = sample_of(train, "sub/b.png")  # the embedded image, written out
    assert not (tmp_path / "out" / "train2017" / "sub" / "b.png").is_symlink()
    assert b["box_labels"].tolist() == [1, 0]
    np.testing.assert_allclose(b["boxes"].numpy(), [[22, 14, 42, 34], [2, 2, 8, 8]], atol=1)
    assert b["masks"][1].sum() == 36
    assert len(read_back(tmp_path / "out", "val")) == 1


def test_one_folder_is_split_by_val_fraction_and_names_fix_the_order(tmp_path):
    for i in range(5):
        write_image(tmp_path / "lm" / f"{i}.jpg", value=i)
        write_json(tmp_path / "lm" / f"{i}.json", f"{i}.jpg", [shape("b" if i % 2 else "a", [[1, 1], [9, 1], [9, 9]])])
    summary = convert("labelme", tmp_path / "lm", tmp_path / "out", val_fraction=0.4, names=["b", "a"])
    assert {s: v["images"] for s, v in summary["splits"].items()} == {"train": 3, "val": 2}
    assert read_back(tmp_path / "out").class_names == ["b", "a"]
    with pytest.raises(DatasetError, match=r"\.json: label 'a' is not in names \['b'\]"):
        convert("labelme", tmp_path / "lm", tmp_path / "out2", names=["b"])


def test_bad_labelme_files_name_the_file(tmp_path):
    src = labelme_like(tmp_path / "lm")
    bad = src / "val" / "c.json"
    bad.write_text('{"shapes": [')
    with pytest.raises(DatasetError, match=r"c\.json: not valid JSON"):
        convert("labelme", src, tmp_path / "out")
    bad.write_text('{"imagePath": "c.jpg"}')
    with pytest.raises(DatasetError, match=r"c\.json: not a LabelMe file"):
        convert("labelme", src, tmp_path / "out")
    write_json(bad, "c.jpg", [shape("dog", [[4, "x"]])])
    with pytest.raises(DatasetError, match=r"c\.json: shapes\[0\] \('dog'\): 'points'"):
        convert("labelme", src, tmp_path / "out")
    write_json(bad, "c.jpg", [], w=10)
    with pytest.raises(DatasetError, match=r"c\.json: imageHeight x imageWidth is 48x10"):
        convert("labelme", src, tmp_path / "out")
    write_json(bad, "gone.jpg", [])
    with pytest.raises(DatasetError, match=r"gone\.jpg: image not found \(the image of .*c\.json\)"):
        convert("labelme", src, tmp_path / "out")
    with pytest.raises(ConfigError, match="labelme.circle_points"):
        convert("labelme", src, tmp_path / "out", circle_points=2)
