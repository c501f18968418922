import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from fourm21.data.coco import CocoDataset
from fourm21.data.sample import IGNORE_INDEX
from fourm21.data.shapes import SCENES
from fourm21.data.transforms import build_dense_transform
from fourm21.errors import DatasetError


@pytest.fixture()
def tiny_coco(tmp_path):
    """Two images with non-contiguous category ids (COCO style): polygon, crowd RLE, and an empty image."""
    (tmp_path / "img").mkdir()
    for name, size in (("a.jpg", (40, 60)), ("b.png", (32, 32))):
        Image.fromarray(np.full((*size, 3), 90, np.uint8)).save(tmp_path / "img" / name)
    crowd = np.zeros((40, 60), np.uint8)
    crowd[30:38, 40:58] = 1
    rle = mask_utils.encode(np.asfortranarray(crowd))
    rle["counts"] = rle["counts"].decode()
    data = {
        "images": [{"id": 7, "file_name": "a.jpg", "height": 40, "width": 60},
                   {"id": 9, "file_name": "b.png", "height": 32, "width": 32}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 18, "bbox": [10, 5, 20, 10], "area": 200, "iscrowd": 0,
             "segmentation": [[10, 5, 30, 5, 30, 15, 10, 15]]},
            {"id": 2, "image_id": 7, "category_id": 3, "bbox": [40, 30, 18, 8], "area": 144, "iscrowd": 1,
             "segmentation": rle},
            # one object in two parts (an occluded car): a list of two polygons
            {"id": 3, "image_id": 7, "category_id": 3, "bbox": [2, 20, 30, 10], "area": 120, "iscrowd": 0,
             "segmentation": [[2, 20, 10, 20, 10, 30, 2, 30], [24, 20, 32, 20, 32, 30, 24, 30]]},
        ],
        "categories": [{"id": 3, "name": "car"}, {"id": 18, "name": "dog"}],
    }
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps(data))
    return tmp_path, ann


def test_reads_polygons_maps_ids_and_skips_crowd(tiny_coco):
    root, ann = tiny_coco
    ds = CocoDataset(root / "img", ann, build_dense_transform(64, train=False))
    assert ds.cat_ids == [3, 18] and ds.class_names == ["car", "dog"]
    s = ds[0]
    assert s["image"].shape == (3, 64, 64)
    assert s["box_labels"].tolist() == [1, 0]  # dog -> 1, car -> 0; the crowd car is not a training target
    scale = 64 / 60
    np.testing.assert_allclose(s["boxes"][0].numpy(), np.array([10, 5, 31, 16]) * scale, atol=scale * 1.5)
    assert s["masks"].shape == (2, 64, 64) and s["masks"][0].sum() > 150
    two_parts = s["masks"][1].numpy()
    cols = np.nonzero(two_parts.any(0))[0]
    assert len(np.split(cols, np.nonzero(np.diff(cols) > 1)[0] + 1)) == 2  # both parts, with the gap between
    np.testing.assert_allclose(s["boxes"][1].numpy(), np.array([2, 20, 33, 31]) * scale, atol=scale * 1.5)
    assert s["meta"]["scale"] == pytest.approx(scale)
    sem = s["semantic"]
    assert (sem[s["masks"][0]] == 2).float().mean() > 0.9  # semantic id = contiguous + 1
    assert (sem == IGNORE_INDEX).any()  # crowd region and letterbox padding are ignored
    assert "label" not in s  # no image-level labels in plain COCO


def test_images_without_annotations_are_kept(tiny_coco):
    root, ann = tiny_coco
    ds = CocoDataset(root / "img", ann, build_dense_transform(32, train=False))
    assert len(ds) == 2
    s = ds[1]
    assert s["boxes"].shape == (0, 4) and s["masks"].shape == (0, 32, 32)
    assert (s["semantic"] == 0).all()


@pytest.mark.parametrize("content, message", [("{not json", "not valid JSON"),
                                              ('{"images": [], "categories": []}', "annotations")])
def test_bad_json_names_the_file(tmp_path, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(DatasetError, match=message) as e:
        CocoDataset(tmp_path, bad, build_dense_transform(32, train=False))
    assert "bad.json" in str(e.value)


def test_missing_file_and_image(tiny_coco):
    root, ann = tiny_coco
    with pytest.raises(DatasetError, match="not found"):
        CocoDataset(root, root / "nope.json")
    (root / "img" / "a.jpg").unlink()
    ds = CocoDataset(root / "img", ann, build_dense_transform(32, train=False))
    with pytest.raises(DatasetError, match="a.jpg"):
        ds[0]


def test_shapes_samples_carry_every_target(shapes_root):
    ds = CocoDataset(shapes_root / "images", shapes_root / "annotations/instances_val.json",
                     build_dense_transform(64, train=False), semantic_dir=shapes_root / "semantic")
    s = ds[0]
    assert set(s) >= {"image", "label", "boxes", "box_labels", "masks", "semantic", "meta"}
    assert ds.image_class_names == list(SCENES)
    assert len(s["boxes"]) == len(s["masks"]) == len(s["box_labels"]) >= 1


def test_large_images_are_decoded_at_the_letterbox_size(tmp_path):
    """Polygons, RLE crowds and semantic PNGs are rasterised at the size the pipeline shrinks to, not at full size."""
    (tmp_path / "img").mkdir()
    (tmp_path / "sem").mkdir()
    img = np.zeros((200, 320, 3), np.uint8)
    img[40:120, 80:240] = (200, 30, 30)  # the object, painted where its polygon is
    Image.fromarray(img).save(tmp_path / "img" / "a.png")
    sem_png = np.zeros((200, 320), np.uint8)
    sem_png[40:120, 80:240] = 1
    Image.fromarray(sem_png).save(tmp_path / "sem" / "a.png")
    crowd = np.zeros((200, 320), np.uint8)
    crowd[160:200, 0:40] = 1
    rle = mask_utils.encode(np.asfortranarray(crowd))
    rle["counts"] = rle["counts"].decode()
    data = {"images": [{"id": 1, "file_name": "a.png", "height": 200, "width": 320}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [80, 40, 160, 80], "area": 12800,
                             "iscrowd": 0, "segmentation": [[80, 40, 240, 40, 240, 120, 80, 120]]},
                            {"id": 2, "image_id": 1, "category_id": 5, "bbox": [0, 160, 40, 40], "area": 1600,
                             "iscrowd": 1, "segmentation": rle}],
            "categories": [{"id": 5, "name": "box"}]}
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    ds = CocoDataset(tmp_path / "img", ann, build_dense_transform(64, train=False))
    image, boxes, labels, masks, semantic, orig, _ = ds._load_raw(1)
    assert image.shape == (40, 64, 3) and masks.shape == (1, 40, 64) and semantic.shape == (40, 64)
    assert orig == (200, 320)
    np.testing.assert_allclose(boxes[0], [16, 8, 48, 24])
    assert masks[0, 8:24, 16:48].all() and masks[0].sum() == 16 * 32
    assert (semantic[masks[0]] == 1).all() and (semantic[32:40, 0:8] == IGNORE_INDEX).all()
    s = ds[0]
    assert s["meta"]["orig_size"] == (200, 320) and s["meta"]["scale"] == pytest.approx(0.2)
    np.testing.assert_allclose(s["boxes"][0].numpy(), [16, 8, 48, 24])
    assert (s["image"][0, 8:24, 16:48] > s["image"][0, 0:8, 0:8].float().mean()).all()  # image and mask still aligned
    with_png = CocoDataset(tmp_path / "img", ann, build_dense_transform(64, train=False), semantic_dir=tmp_path / "sem")
    assert (with_png._load_raw(1)[4] == semantic.clip(max=1)).mean() > 0.95


def test_jpegs_are_decoded_reduced_towards_the_letterbox_and_stay_aligned(tmp_path):
    """A 256x192 JPEG trained at 64 px is decoded at 1/4 (DCT scaling): image and mask agree."""
    from PIL import Image

    from fourm21.data.images import read_image

    (tmp_path / "img").mkdir()
    image = np.full((192, 256, 3), 40, np.uint8)
    image[48:144, 64:160] = (220, 30, 30)  # a red square, its polygon below
    Image.fromarray(image).save(tmp_path / "img" / "a.jpg", quality=95)
    assert read_image(tmp_path / "img" / "a.jpg", min_size=(48, 64)).shape == (48, 64, 3)  # 1/4
    assert read_image(tmp_path / "img" / "a.jpg", min_size=(50, 70)).shape == (96, 128, 3)  # 1/2: 1/4 is too small
    assert read_image(tmp_path / "img" / "a.jpg").shape == (192, 256, 3)
    poly = [64, 48, 160, 48, 160, 144, 64, 144]
    ann = {"images": [{"id": 1, "file_name": "a.jpg", "height": 192, "width": 256}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [64, 48, 96, 96], "area": 9216.0,
                            "iscrowd": 0, "segmentation": [poly]}],
           "categories": [{"id": 1, "name": "square"}]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    s = CocoDataset(tmp_path / "img", tmp_path / "ann.json", build_dense_transform(64, train=False))[0]
    np.testing.assert_allclose(s["boxes"][0].numpy(), [16, 12, 40, 36])  # the polygon scaled by 1/4
    red = s["image"][0] > s["image"][1] + 1.0  # normalised red channel well above green
    mask = s["masks"][0].bool()
    assert (red[mask].float().mean() > 0.97) and (red[~mask & (s["semantic"] != 255)].float().mean() < 0.03)
