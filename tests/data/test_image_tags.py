"""Image-level labels from a CSV beside a COCO, YOLO or VOC folder, and semantic PNGs through a value map."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from fourm21.data.coco import CocoDataset
from fourm21.data.image_tags import ImageTags
from fourm21.data.transforms import build_dense_transform
from fourm21.engine.common import CONFIG_DIR
from fourm21.errors import DatasetError
from tests.data.formats.helpers import sample_of, write_image
from tests.data.formats.test_voc import voc_like

CSV = "file_name,breed,species,width\na.jpg,Bengal,cat,64\nb.jpg,pug,dog,64\nc.jpg,,dog,64\n"


def coco_folder(root: Path, csv: str = CSV) -> Path:
    """Three 64 x 48 images in a COCO file (one object each: a, b cats/dogs), labels.csv beside them."""
    images, anns = [], []
    for i, stem in enumerate("abc", start=1):
        write_image(root / "images" / f"{stem}.jpg", value=i)
        images.append({"id": i, "file_name": f"{stem}.jpg", "width": 64, "height": 48})
        anns.append({"id": i, "image_id": i, "category_id": 1 + (i == 2), "bbox": [8, 12, 16, 24], "iscrowd": 0,
                     "segmentation": [[8, 12, 24, 12, 24, 36, 8, 36]], "area": 384.0})
    cats = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    (root / "instances.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    (root / "labels.csv").write_text(csv)
    return root


def dataset(root: Path, **kwargs) -> CocoDataset:
    return CocoDataset(root / "images", root / "instances.json", transform=build_dense_transform(64, train=False),
                       **kwargs)


def test_class_column_and_attribute_columns(tmp_path):
    ds = dataset(coco_folder(tmp_path), image_labels=tmp_path / "labels.csv", image_class_col="breed",
                 groups=["species"])
    assert ds.image_class_names == ["Bengal", "pug"]  # sorted values of the whole CSV
    assert ds.attribute_classes == {"species": ["cat", "dog"]}
    a, b, c = (sample_of(ds, f"{s}.jpg") for s in "abc")
    assert (a["label"], a["attributes"]) == (0, {"species": 0})
    assert (b["label"], b["attributes"]) == (1, {"species": 1})
    assert "label" not in c and c["attributes"] == {"species": 1}  # an empty cell: that label is missing


def test_one_label_column_is_the_class_several_are_attributes(tmp_path):
    one = coco_folder(tmp_path / "one", "file_name,breed\na.jpg,Bengal\nb.jpg,pug\n")
    ds = dataset(one, image_labels=one / "labels.csv")
    assert ds.image_class_names == ["Bengal", "pug"] and ds.attribute_classes == {}
    assert sample_of(ds, "b.jpg")["label"] == 1
    assert "label" not in sample_of(ds, "c.jpg") and ds.tags_unmatched == 1  # no row: no label, counted
    several = coco_folder(tmp_path / "several")
    ds = dataset(several, image_labels=several / "labels.csv")
    assert ds.image_class_names == [] and list(ds.attribute_classes) == ["breed", "species", "width"]
    assert "label" not in sample_of(ds, "a.jpg")


def test_tag_errors_name_file_and_line(tmp_path):
    root = coco_folder(tmp_path)
    with pytest.raises(DatasetError, match=r"labels.csv, line 3: breed 'pug' is not one of \['Bengal', 'Abyss'\]"):
        dataset(root, image_labels=root / "labels.csv", image_class_col="breed",
                image_label_classes={"breed": ["Bengal", "Abyss"]})
    (root / "blank.csv").write_text("file_name,breed\na.jpg,Bengal\n,pug\n")
    with pytest.raises(DatasetError, match=r"blank.csv, line 3: empty 'file_name'"):
        dataset(root, image_labels=root / "blank.csv")
    (root / "twice.csv").write_text("file_name,breed\na.jpg,Bengal\na.jpg,pug\n")
    with pytest.raises(DatasetError, match=r"twice.csv, line 3: 'a.jpg' has a row already"):
        dataset(root, image_labels=root / "twice.csv")
    with pytest.raises(DatasetError, match=r"CSV not found: .*nope.csv"):
        dataset(root, image_labels=root / "nope.csv")
    with pytest.raises(DatasetError, match=r"labels.csv: missing column\(s\) \['colour'\]"):
        dataset(root, image_labels=root / "labels.csv", image_class_col="colour")
    (root / "other.csv").write_text("file_name,breed\nx.jpg,Bengal\n")
    with pytest.raises(DatasetError, match=r"other.csv: no row names an image of .*instances.json"):
        dataset(root, image_labels=root / "other.csv")


def test_rows_match_by_base_name_when_the_file_name_has_folders():
    tags = ImageTags.__new__(ImageTags)
    tags._by_name, tags._by_base = {"a.jpg": (1, {})}, {"a.jpg": "a.jpg"}
    assert tags.lookup("train/a.jpg") == (1, {}) and tags.lookup("train/b.jpg") is None


def test_semantic_pngs_through_a_value_map(tmp_path):
    root = coco_folder(tmp_path)
    (root / "semantic").mkdir()
    for stem in "abc":  # a trimap-like map: 1 pet (a little wider than the polygon), 0 background, 255 border
        m = np.zeros((48, 64), np.uint8)
        m[12:36, 8:26] = 1
        m[11, 8:24] = 255
        Image.fromarray(m).save(root / "semantic" / f"{stem}.png")
    ds = dataset(root, semantic_dir=root / "semantic", semantic_values={0: 0, 1: "object", 255: 255})
    a, b = sample_of(ds, "a.jpg")["semantic"].numpy(), sample_of(ds, "b.jpg")["semantic"].numpy()
    assert (a[12:36, 8:26] == 1).all() and (b[12:36, 8:26] == 2).all()  # cat = 1, dog = 2, past the polygon too
    assert (a[11, 8:24] == 255).all() and (a[:11] == 0).all()
    plain = dataset(root, semantic_dir=root / "semantic")
    assert (sample_of(plain, "b.jpg")["semantic"].numpy()[12:36, 8:26] == 1).all()  # no map: the PNG's values
    with pytest.raises(DatasetError, match=r"semantic mask .*a.png: value\(s\) \[255\] not in data.semantic_values"):
        dataset(root, semantic_dir=root / "semantic", semantic_values={0: 0, 1: "object"})[0]
    with pytest.raises(DatasetError, match=r"data.semantic_values.1: a class id 0..255"):
        dataset(root, semantic_dir=root / "semantic", semantic_values={0: 0, 1: "pet"})
    with pytest.raises(DatasetError, match="no semantic_dir"):
        dataset(root, semantic_values={0: 0})


def _datamodule(overrides: list[str]):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["data.datamodule.num_workers=0", "data.img_size=64", "data.aug.mosaic=0",
                                             *overrides])
    dm = instantiate(cfg.data.datamodule)
    dm.setup("fit")
    return dm


def test_tags_beside_a_yolo_folder(tmp_path):
    ds = tmp_path / "shop"
    for i, stem in enumerate(("a", "b", "c")):
        write_image(ds / "images" / "train" / f"{stem}.jpg", value=i)
        (ds / "labels" / "train").mkdir(parents=True, exist_ok=True)
        (ds / "labels" / "train" / f"{stem}.txt").write_text("0 0.25 0.5 0.25 0.5\n")
    (ds / "data.yaml").write_text(yaml.safe_dump({"path": ".", "train": "images/train", "val": "images/train",
                                                  "names": {0: "thing"}}))
    (ds / "labels.csv").write_text("file_name,line\na.jpg,shoes\nb.jpg,hats\nc.jpg,shoes\n")
    dm = _datamodule(["data=yolo", f"data.root={ds}", f"data.image_labels={ds / 'labels.csv'}",
                      f"data.cache_dir={tmp_path / 'cache'}"])
    for split in (dm.train_set, dm.val_set):
        assert split.image_class_names == ["hats", "shoes"]
        assert [sample_of(split, f"{s}.jpg")["label"] for s in "abc"] == [1, 0, 1]


def test_tags_beside_a_voc_folder(tmp_path):
    root = voc_like(tmp_path)
    (tmp_path / "tags.csv").write_text("image,indoor,season\na.jpg,yes,summer\nb.jpg,no,winter\nc.jpg,yes,\n")
    dm = _datamodule(["data=voc", f"data.root={root}", f"data.image_labels={tmp_path / 'tags.csv'}",
                      "data.image_col=image", f"data.cache_dir={tmp_path / 'cache'}"])
    assert dm.train_set.attribute_classes == {"indoor": ["no", "yes"], "season": ["summer", "winter"]}
    assert sample_of(dm.train_set, "b.jpg")["attributes"] == {"indoor": 0, "season": 1}
    assert sample_of(dm.val_set, "c.jpg")["attributes"] == {"indoor": 1, "season": -1}
