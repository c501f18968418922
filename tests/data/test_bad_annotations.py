"""Bad COCO JSON and label CSVs, made on the spot: a DatasetError naming the file (and the entry or line)
where nothing can be guessed; a repaired or dropped annotation, counted in ``repairs``, where it can."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from fourm21.data.coco import CocoDataset, load_coco
from fourm21.data.csv_labels import AttributeDataset, MultiLabelCaptionDataset
from fourm21.data.sample import IGNORE_INDEX
from fourm21.data.transforms import build_dense_transform
from fourm21.errors import DatasetError
from fourm21.training.evaluation import data_report

H, W = 40, 60


def _ann(i: int, **kw) -> dict:
    a = {"id": i, "image_id": 1, "category_id": 1, "bbox": [10, 5, 20, 10], "area": 200.0, "iscrowd": 0,
         "segmentation": [[10, 5, 30, 5, 30, 15, 10, 15]]}
    a.update(kw)
    return a


BASE = {"images": [{"id": 1, "file_name": "a.png", "height": H, "width": W},
                   {"id": 2, "file_name": "b.png", "height": H, "width": W}],
        "annotations": [_ann(1)],
        "categories": [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}]}


@pytest.fixture()
def root(tmp_path):
    (tmp_path / "img").mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(tmp_path / "img" / name)
    return tmp_path


def _write(root, data) -> object:
    path = root / "instances.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _edit(fn):
    data = copy.deepcopy(BASE)
    fn(data)
    return data


def _rle(h: int, w: int) -> dict:
    m = np.zeros((h, w), np.uint8)
    m[20:30, 40:50] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


FATAL = [  # (name, file content, words of the message)
    ("not_json", "{'images': [", "not valid JSON"),
    ("top_level_list", "[1, 2]", "the top level must be a JSON object"),
    ("missing_images", _edit(lambda d: d.pop("images")), "missing top-level key 'images'"),
    ("missing_annotations", _edit(lambda d: d.pop("annotations")), "missing top-level key 'annotations'"),
    ("missing_categories", _edit(lambda d: d.pop("categories")), "missing top-level key 'categories'"),
    ("images_not_a_list", _edit(lambda d: d.update(images={"1": "a.png"})), "'images' must be a list of objects"),
    ("no_images", _edit(lambda d: d.update(images=[], annotations=[])), "'images' is empty"),
    ("image_without_file_name", _edit(lambda d: d["images"][1].pop("file_name")), "images[1] has no 'file_name'"),
    ("image_without_size", _edit(lambda d: d["images"][0].pop("height")), "image 1 (a.png) needs positive integer"),
    ("image_id_not_int", _edit(lambda d: d["images"][0].update(id="one")), "images[0] has id 'one'"),
    ("duplicate_image_id", _edit(lambda d: d["images"][1].update(id=1)), "duplicate images id 1 (images[1])"),
    ("duplicate_annotation_id", _edit(lambda d: d["annotations"].append(_ann(1))), "duplicate annotations id 1"),
    ("duplicate_category_id", _edit(lambda d: d["categories"][1].update(id=1)), "duplicate categories id 1"),
    ("unknown_category", _edit(lambda d: d["annotations"].append(_ann(2, category_id=7))),
     "annotation 2 has unknown category_id 7; the categories are [1, 2]"),
    ("annotation_without_image_id", _edit(lambda d: d["annotations"][0].pop("image_id")),
     "annotations[0] has no 'image_id'"),
]


@pytest.mark.parametrize("name, content, words", FATAL, ids=[f[0] for f in FATAL])
def test_fatal_json_fault_names_the_file(root, name, content, words):
    path = _write(root, content)
    with pytest.raises(DatasetError, match="instances.json") as e:
        CocoDataset(root / "img", path)
    assert words in str(e.value)


def test_missing_and_binary_annotation_files(root):
    with pytest.raises(DatasetError, match="annotation file not found: .*nope.json"):
        load_coco(root / "nope.json")
    (root / "bin.json").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(DatasetError, match="bin.json: not a UTF-8 text file"):
        load_coco(root / "bin.json")


REPAIRED = [  # (name, annotations added to image 1, the repairs counted, the boxes kept (input pixels))
    ("annotation_of_missing_image", [_ann(2, image_id=99)], {"missing_image": 1}, [[10, 5, 30, 15]]),
    ("negative_width", [_ann(2, bbox=[10, 5, -4, 10])], {"empty_bbox": 1}, [[10, 5, 30, 15]]),
    ("zero_height", [_ann(2, bbox=[10, 5, 4, 0])], {"empty_bbox": 1}, [[10, 5, 30, 15]]),
    ("bbox_not_4_numbers", [_ann(2, bbox=[10, 5, 4])], {"bad_bbox": 1}, [[10, 5, 30, 15]]),
    ("bbox_nan", [_ann(2, bbox=[10, 5, float("nan"), 3])], {"bad_bbox": 1}, [[10, 5, 30, 15]]),
    ("bbox_missing", [{k: v for k, v in _ann(2).items() if k != "bbox"}], {"bad_bbox": 1}, [[10, 5, 30, 15]]),
    ("bbox_entirely_outside", [_ann(2, bbox=[70, 50, 5, 5], segmentation=[])], {"outside_bbox": 1},
     [[10, 5, 30, 15]]),
    ("bbox_partly_outside", [_ann(2, bbox=[-5, 30, 20, 20], segmentation=[])], {"clipped_bbox": 1, "box_as_mask": 1},
     [[10, 5, 30, 15], [0, 30, 15, 40]]),
    ("polygon_of_2_points", [_ann(2, bbox=[40, 20, 10, 10], segmentation=[[40, 20, 50, 30]])],
     {"bad_polygon": 1, "box_as_mask": 1}, [[10, 5, 30, 15], [40, 20, 50, 30]]),
    ("one_bad_part_of_two", [_ann(2, bbox=[40, 20, 10, 10], segmentation=[[40, 20, 50, 20, 50, 30, 40, 30], [1, 2]])],
     {"bad_polygon": 1}, [[10, 5, 30, 15], [40, 20, 51, 31]]),
    ("empty_segmentation", [_ann(2, bbox=[40, 20, 10, 10], segmentation=[])], {"box_as_mask": 1},
     [[10, 5, 30, 15], [40, 20, 50, 30]]),
    ("rle_of_another_size", [_ann(2, bbox=[40, 20, 10, 10], segmentation=_rle(20, 30))],
     {"bad_rle": 1, "box_as_mask": 1}, [[10, 5, 30, 15], [40, 20, 50, 30]]),
    ("crowd_rle", [_ann(2, bbox=[40, 20, 10, 10], iscrowd=1, segmentation=_rle(H, W))], {}, [[10, 5, 30, 15]]),
    ("crowd_without_region", [_ann(2, bbox=[40, 20, 10, 10], iscrowd=1, segmentation=[])], {"empty_crowd": 1},
     [[10, 5, 30, 15]]),
    ("area_missing", [{k: v for k, v in _ann(2, bbox=[40, 20, 10, 10], segmentation=[]).items() if k != "area"}],
     {"area": 1, "box_as_mask": 1}, [[10, 5, 30, 15], [40, 20, 50, 30]]),
]


@pytest.mark.parametrize("name, added, repairs, boxes", REPAIRED, ids=[r[0] for r in REPAIRED])
def test_faulty_annotation_is_repaired_or_dropped_and_counted(root, caplog, name, added, repairs, boxes):
    path = _write(root, _edit(lambda d: d["annotations"].extend(added)))
    with caplog.at_level("WARNING"):
        ds = CocoDataset(root / "img", path, build_dense_transform(64, train=False))
    assert ds.repairs == repairs
    for kind in repairs:
        assert "instances.json" in caplog.text and str(repairs[kind]) in caplog.text
    s = ds[0]
    np.testing.assert_allclose(s["boxes"].numpy() / (64 / W), np.array(boxes, np.float32).reshape(-1, 4), atol=1.5)
    if name == "crowd_rle":
        assert (s["semantic"][22:30, 45:53] == IGNORE_INDEX).all()  # a crowd region is "ignore", not a target
    ids = {a["id"] for a in ds.coco.dataset["annotations"]}  # COCOeval's ground truth is the repaired one
    assert (2 in ids) == (len(boxes) == 2 or name == "crowd_rle")


def test_repairs_reach_the_report(root, tmp_path):
    path = _write(root, _edit(lambda d: d["annotations"].extend([_ann(2, image_id=99), _ann(3, bbox=[-5, 30, 20, 20]),
                                                                 _ann(4, bbox=[1, 1, 0, 0])])))
    ds = CocoDataset(root / "img", path)

    class DM:
        train_sets = {"main": ds}
        val_sets = {"main": ds}  # the same file: counted once
    report = data_report(DM(), tmp_path)
    assert report == {"data/skipped_images": 0.0, "data/annotations_dropped": 2.0, "data/annotations_repaired": 1.0}


# --- CSV label files ----------------------------------------------------------------------------------------

CSV_FATAL = [  # (name, dataset, file bytes, words)
    ("attr_missing_column", "attr", b"image,colour\na.png,red\n", "missing column(s) ['season']"),
    ("attr_no_rows", "attr", b"image,colour,season\n", "no rows below the header"),
    ("attr_empty_file", "attr", b"", "missing column(s) ['image', 'colour', 'season']; found []"),
    ("attr_not_utf8", "attr", "image,colour,season\na.png,rouge,été\n".encode("latin-1"), "not UTF-8 text"),
    ("ml_missing_column", "ml", b"ImageID,Labels\na.png,1\n", "missing column(s) ['Caption']"),
    ("ml_unknown_label", "ml", b"ImageID,Labels,Caption\na.png,1,x\nb.png,1 12,y\n",
     "line 3: unknown class id(s) [12]; known: [1, 3]"),
    ("ml_label_not_int", "ml", b"ImageID,Labels,Caption\na.png,one,x\n", "line 2: labels 'one' are not integers"),
]


@pytest.mark.parametrize("name, kind, content, words", CSV_FATAL, ids=[c[0] for c in CSV_FATAL])
def test_fatal_csv_fault_names_the_file(root, name, kind, content, words):
    path = root / f"{name}.csv"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=f"{name}.csv") as e:
        if kind == "attr":
            AttributeDataset(path, root / "img", groups=["colour", "season"])
        else:
            MultiLabelCaptionDataset(path, root / "img", class_ids=[1, 3])
    assert words in str(e.value)


def test_unknown_attribute_value_counts_as_missing(root, caplog):
    path = root / "attr.csv"
    path.write_text("image,colour\na.png,red\nb.png,purple\n")
    with caplog.at_level("WARNING"):
        ds = AttributeDataset(path, root / "img", groups=["colour"], classes={"colour": ["red", "blue"]})
    assert ds.unknown == {"colour": 1} and ds[1]["attributes"] == {"colour": -1}
    assert "1 value(s) of column 'colour' are not in its class list" in caplog.text
