"""Pascal VOC XML (+ segmentation PNGs) -> COCO, read back through the project's COCO reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fourm21.data.formats import convert
from fourm21.errors import DatasetError
from tests.data.formats.helpers import read_back, sample_of, write_image


def write_xml(path: Path, filename: str, objects: list[tuple], w: int = 64, h: int = 48) -> None:
    """objects: (name, xmin, ymin, xmax, ymax[, difficult]) in VOC's 1-based inclusive pixels."""
    objs = "".join(
        f"<object><name>{o[0]}</name><difficult>{o[5] if len(o) > 5 else 0}</difficult>"
        f"<bndbox><xmin>{o[1]}</xmin><ymin>{o[2]}</ymin><xmax>{o[3]}</xmax><ymax>{o[4]}</ymax></bndbox></object>"
        for o in objects)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><folder>VOC2012</folder><filename>{filename}</filename><size><width>{w}</width>"
                    f"<height>{h}</height><depth>3</depth></size>{objs}</annotation>")


def write_png(path: Path, index: np.ndarray) -> None:
    """A palette PNG of indices, as VOC ships its segmentation maps."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(index.astype(np.uint8), mode="P")
    im.putpalette([v for i in range(256) for v in (i, 255 - i, (i * 7) % 256)])
    im.save(path)


def voc_like(root: Path) -> Path:
    """VOCdevkit/VOC2012 with a, b in train and c in val; a and c segmented."""
    voc = root / "VOCdevkit" / "VOC2012"
    for i, stem in enumerate("abc"):
        write_image(voc / "JPEGImages" / f"{stem}.jpg", value=i)
    write_xml(voc / "Annotations" / "a.xml", "a.jpg", [("dog", 9, 13, 24, 36), ("person", 33, 25, 48, 36, 1)])
    write_xml(voc / "Annotations" / "b.xml", "b.jpg", [("cat", 1, 1, 64, 48)])
    write_xml(voc / "Annotations" / "c.xml", "c.jpg", [("dog", 11, 11, 30, 30)])
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "train.txt").write_text("a\nb\n")
    (voc / "ImageSets" / "Main" / "val.txt").write_text("c\n")
    obj = np.zeros((48, 64), np.uint8)
    obj[12:36, 8:24] = 1  # the dog
    obj[24:36, 32:48] = 2  # the (difficult) person
    obj[11, 8:24] = 255  # a void border, as VOC draws them
    write_png(voc / "SegmentationObject" / "a.png", obj)
    cls = np.where(obj == 1, 12, np.where(obj == 2, 15, obj))  # VOC indices: dog 12, person 15
    write_png(voc / "SegmentationClass" / "a.png", cls)
    c = np.zeros((48, 64), np.uint8)
    c[10:30, 10:30] = 12
    write_png(voc / "SegmentationObject" / "c.png", (c > 0).astype(np.uint8))
    write_png(voc / "SegmentationClass" / "c.png", c)
    return root / "VOCdevkit"


def test_voc_boxes_masks_and_class_maps(tmp_path):
    summary = convert("voc", voc_like(tmp_path), tmp_path / "out")
    assert summary["categories"][11] == "dog" and len(summary["categories"]) == 20  # the VOC classes, in VOC order
    train = read_back(tmp_path / "out")
    assert len(train) == 2 and train.cat_ids == list(range(1, 21))
    s = sample_of(train, "a.jpg")
    assert s["box_labels"].tolist() == [11, 14]  # dog, person (difficult: kept by default)
    np.testing.assert_allclose(s["boxes"].numpy(), [[8, 12, 24, 36], [32, 24, 48, 36]], atol=0)
    assert s["masks"][0].sum() == 16 * 24
    b = sample_of(train, "b.jpg")  # not segmented: its box is its mask
    np.testing.assert_allclose(b["boxes"].numpy(), [[0, 0, 64, 48]])
    assert summary["splits"]["train"]["semantic_dir"] is None  # b has no class map
    assert summary["splits"]["train"]["repairs"] == {"box_as_mask": 1}
    val = read_back(tmp_path / "out", "val", semantic=True)
    sem = sample_of(val, "c.jpg")["semantic"].numpy()
    assert (sem[10:30, 10:30] == 12).all() and (sem[:10] == 0).all()  # our id 12 = dog, as VOC's index


@pytest.mark.parametrize("mode, labels, crowd", [("keep", [11, 14], 0), ("crowd", [11], 1), ("drop", [11], 0)])
def test_difficult_objects(tmp_path, mode, labels, crowd):
    convert("voc", voc_like(tmp_path), tmp_path / "out", difficult=mode)
    train = read_back(tmp_path / "out")
    assert sample_of(train, "a.jpg")["box_labels"].tolist() == labels
    assert sum(a["iscrowd"] for a in train.coco.anns.values()) == crowd


def test_custom_names_and_no_image_sets(tmp_path):
    voc = tmp_path / "voc"
    for i, stem in enumerate("abcd"):
        write_image(voc / "JPEGImages" / f"{stem}.png", value=i)
        write_xml(voc / "Annotations" / f"{stem}.xml", f"{stem}.png", [("widget", 5, 5, 20, 20)])
    summary = convert("voc", voc, tmp_path / "out", val_fraction=0.25)
    assert summary["categories"] == ["widget"]
    assert {s: v["images"] for s, v in summary["splits"].items()} == {"train": 3, "val": 1}


def test_bad_voc_files_name_the_file(tmp_path):
    src = voc_like(tmp_path)
    xml = src / "VOC2012" / "Annotations" / "b.xml"
    xml.write_text("<annotation><object><name>cat</name>")
    with pytest.raises(DatasetError, match=r"b\.xml: not valid XML"):
        convert("voc", src, tmp_path / "out")
    write_xml(xml, "b.jpg", [("cat", "one", 1, 64, 48)])
    with pytest.raises(DatasetError, match=r"b\.xml: object 0 \(cat\) <xmin> is not a number"):
        convert("voc", src, tmp_path / "out")
    write_xml(xml, "b.jpg", [("cat", 1, 1, 64, 48)], w=100)
    with pytest.raises(DatasetError, match=r"b\.xml: <size> says 100x48"):
        convert("voc", src, tmp_path / "out")
    write_xml(xml, "b.jpg", [("cat", 1, 1, 64, 48)])
    (src / "VOC2012" / "JPEGImages" / "b.jpg").unlink()
    with pytest.raises(DatasetError, match=r"b\.jpg: image not found \(the image of .*b\.xml\)"):
        convert("voc", src, tmp_path / "out")
