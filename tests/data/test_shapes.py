import json

import numpy as np
from PIL import Image
from pycocotools.coco import COCO

from fourm21.data.shapes import CATEGORIES, SCENES, ensure_shapes


def test_generation_is_deterministic_and_splits_differ(tmp_path):
    a = ensure_shapes(tmp_path / "a", num_train=6, num_val=4, size=64, max_objects=4, seed=5)
    b = ensure_shapes(tmp_path / "b", num_train=6, num_val=4, size=64, max_objects=4, seed=5)
    ja = json.loads((a / "annotations/instances_train.json").read_text())
    jb = json.loads((b / "annotations/instances_train.json").read_text())
    assert ja == jb
    img_a = np.asarray(Image.open(a / "images/train/train_000000.png"))
    img_b = np.asarray(Image.open(b / "images/train/train_000000.png"))
    np.testing.assert_array_equal(img_a, img_b)
    val0 = np.asarray(Image.open(a / "images/val/val_000000.png"))
    assert not np.array_equal(img_a, val0)


def test_coco_layout_and_labels(shapes_root):
    coco = COCO(str(shapes_root / "annotations/instances_train.json"))
    assert len(coco.imgs) == 24
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CATEGORIES)
    assert len(SCENES) >= 4 and len(CATEGORIES) >= 3
    assert {im["label"] for im in coco.imgs.values()} <= set(range(len(SCENES)))
    counts = [len(coco.getAnnIds(imgIds=i)) for i in coco.imgs]
    assert max(counts) >= 2, "some images must hold several objects"
    for img_id, info in list(coco.imgs.items())[:8]:
        sem = np.asarray(Image.open(shapes_root / "semantic" / info["file_name"]))
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img_id)):
            m = coco.annToMask(ann).astype(bool)
            assert m.sum() == ann["area"]
            assert (sem[m] == ann["category_id"]).all()  # semantic id = category id (0 = background)
            x, y, w, h = ann["bbox"]
            ys, xs = np.nonzero(m)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)


def test_regenerates_when_settings_change(tmp_path):
    root = ensure_shapes(tmp_path, num_train=3, num_val=2, size=64, max_objects=4, seed=0)
    assert len(json.loads((root / "annotations/instances_val.json").read_text())["images"]) == 2
    ensure_shapes(tmp_path, num_train=3, num_val=5, size=64, max_objects=4, seed=0)
    assert len(json.loads((root / "annotations/instances_val.json").read_text())["images"]) == 5
