"""Keypoints in the data pipeline: the shapes' geometric definition, the COCO reader, every geometric
augmentation (flip with the left/right swap, affine, mosaic), visibility of points that leave the image, and
collation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fourm21.data.coco import CocoDataset, flip_from_names
from fourm21.data.collate import collate_samples
from fourm21.data.mosaic import MosaicItem, mosaic4
from fourm21.data.shapes import KEYPOINT_FLIP_IDX, KEYPOINT_NAMES, ensure_shapes, shape_keypoints
from fourm21.data.transforms import apply_dense_transform, build_dense_transform
from fourm21.errors import DatasetError


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    return ensure_shapes(tmp_path_factory.mktemp("shapes"), num_train=24, num_val=4, size=64, max_objects=4)


def _dataset(root, hflip: float, flip_idx=None) -> CocoDataset:
    return CocoDataset(root / "images", root / "annotations" / "instances_train.json",
                       build_dense_transform(64, train=True, hflip=hflip), semantic_dir=root / "semantic",
                       flip_idx=flip_idx)


def _off_definition(sample) -> float:
    """Largest distance (px) of a shape's extreme keypoints from the box edge they define (left on x0, right on
    x1, top on y0, bottom on y1) and of the centre from inside the box."""
    b, k = sample["boxes"], sample["keypoints"]
    assert k.shape == (len(b), len(KEYPOINT_NAMES), 3) and (k[..., 2] > 0).all()
    off = torch.stack([(k[:, 1, 0] - b[:, 0]).abs(), (k[:, 2, 0] - b[:, 2]).abs(),
                       (k[:, 3, 1] - b[:, 1]).abs(), (k[:, 4, 1] - b[:, 3]).abs()])
    inside = (k[:, 0, 0] >= b[:, 0]) & (k[:, 0, 0] <= b[:, 2]) & (k[:, 0, 1] >= b[:, 1]) & (k[:, 0, 1] <= b[:, 3])
    assert inside.all()
    return float(off.max())


def test_shape_keypoints_are_the_centroid_and_the_extreme_points_of_the_mask():
    mask = np.zeros((20, 30), bool)
    mask[5:9, 10:20] = True  # a 10 x 4 bar
    k = np.asarray(shape_keypoints(mask)).reshape(5, 3)
    np.testing.assert_allclose(k[:, :2], [[15, 7], [10, 7], [20, 7], [15, 5], [15, 9]])
    assert (k[:, 2] == 2).all()
    ring = np.zeros((20, 20), bool)
    ring[2:18, 2:18] = True
    ring[6:14, 6:14] = False  # the centroid falls in the hole: labelled, not visible
    assert shape_keypoints(ring)[2] == 1


def test_a_flipped_sample_keeps_every_keypoint_on_its_definition(shapes_root):
    plain, flipped = _dataset(shapes_root, 0.0), _dataset(shapes_root, 1.0)
    assert plain.keypoint_names == list(KEYPOINT_NAMES) and plain.flip_idx == list(KEYPOINT_FLIP_IDX)
    for i in range(8):
        assert _off_definition(plain[i]) < 1e-3
        assert _off_definition(flipped[i]) < 1e-3
        np.testing.assert_allclose(flipped[i]["boxes"][:, [2, 0]], 64 - plain[i]["boxes"][:, [0, 2]])


def test_a_flip_without_the_swap_breaks_the_definition(shapes_root):
    """The check above fails when flip_idx is not applied: 'left' lands on the right edge."""
    ignored = _dataset(shapes_root, 1.0, flip_idx=list(range(len(KEYPOINT_NAMES))))
    assert max(_off_definition(ignored[i]) for i in range(8)) > 5


def test_flip_idx_from_the_names_and_the_config():
    assert flip_from_names(["nose", "left_eye", "right_eye", "Left hand", "Right hand"]) == [0, 2, 1, 4, 3]
    assert flip_from_names(["a", "b"]) == [0, 1]


def test_a_bad_flip_idx_is_one_line_naming_the_key(shapes_root):
    with pytest.raises(DatasetError, match=r"data.flip_idx: flip_idx \[0, 0, 1, 2, 3\] is not a permutation"):
        _dataset(shapes_root, 1.0, flip_idx=[0, 0, 1, 2, 3])


def test_affine_moves_keypoints_with_the_masks_and_hides_those_that_leave(shapes_root):
    import albumentations as A

    ds = _dataset(shapes_root, 0.0)
    image, boxes, labels, masks, sem, _, kpts = ds._load_raw(ds.ids[0])
    shift = A.Compose([A.Affine(translate_px={"x": 40, "y": -3}, p=1.0, border_mode=0)],
                      additional_targets={"semantic": "mask", "valid": "mask"},
                      keypoint_params=A.KeypointParams(format="xy", remove_invisible=False), save_applied_params=True)
    out = apply_dense_transform(shift, image, boxes, masks, sem, keypoints=kpts)
    moved = out["keypoints"]
    for i, src in enumerate(out["keep"]):
        inside = (kpts[src, :, 0] + 40 <= 64) & (kpts[src, :, 1] - 3 >= 0)
        np.testing.assert_allclose(moved[i, inside, :2], kpts[src, inside, :2] + [40, -3], atol=1e-4)
        assert (moved[i, ~inside, 2] == 0).all() and (moved[i, ~inside, :2] == 0).all()
    assert len(out["keep"]) < len(kpts) or (moved[..., 2] == 0).any()  # something left the image


def test_mosaic_places_keypoints_with_their_images():
    rng = np.random.default_rng(3)
    items = []
    for k in range(4):
        mask = np.zeros((32, 32), bool)
        mask[8:24, 8:24] = True
        kp = np.array([[[16.0, 16.0, 2], [8.0, 16.0, 2], [24.0, 16.0, 2]]], np.float32)
        items.append(MosaicItem(np.full((32, 32, 3), 60 * k, np.uint8), mask[None], np.array([k]), None, kp))
    out = mosaic4(items, 64, rng)
    assert out.keypoints.shape == (len(out.masks), 3, 3)
    for m, kp in zip(out.masks, out.keypoints):
        ys, xs = np.nonzero(m)
        seen = kp[:, 2] > 0
        assert seen.any()
        assert ((kp[seen, 0] >= xs.min()) & (kp[seen, 0] <= xs.max() + 1)).all()
        assert ((kp[seen, 1] >= ys.min()) & (kp[seen, 1] <= ys.max() + 1)).all()


def test_coco_keypoints_are_read_scaled_and_collated(tmp_path):
    from PIL import Image

    (tmp_path / "img").mkdir()
    for i in (1, 2):
        Image.fromarray(np.zeros((100, 200, 3), np.uint8)).save(tmp_path / "img" / f"{i}.png")
    coco = {"images": [{"id": i, "file_name": f"{i}.png", "height": 100, "width": 200} for i in (1, 2)],
            "categories": [{"id": 1, "name": "person", "keypoints": ["nose", "left_eye", "right_eye"],
                            "skeleton": [[1, 2], [1, 3]]}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [20, 10, 100, 80], "iscrowd": 0,
                             "keypoints": [60, 40, 2, 50, 30, 1, 0, 0, 0]},
                            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [120, 10, 50, 50], "iscrowd": 0},
                            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 0,
                             "keypoints": [1, 2]}]}
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(coco))
    ds = CocoDataset(tmp_path / "img", ann, build_dense_transform(100, train=False))
    assert ds.keypoint_names == ["nose", "left_eye", "right_eye"] and ds.skeleton == [[1, 2], [1, 3]]
    assert ds.flip_idx == [0, 2, 1] and ds.repairs["bad_keypoints"] == 1
    assert ds.coco.anns[2]["num_keypoints"] == 0  # COCOeval reads it on every annotation of the category
    s = ds[0]
    np.testing.assert_allclose(s["keypoints"][0], [[30, 20, 2], [25, 15, 1], [0, 0, 0]])  # half size
    assert (s["keypoints"][1, :, 2] == 0).all()
    batch = collate_samples([s, ds[1], {"image": s["image"], "meta": {}}])
    assert batch["gt_keypoints"].shape == (3, 2, 3, 3)
    assert batch["has_keypoints"].tolist() == [True, True, False]
