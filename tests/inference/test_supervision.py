"""Predictions as ``supervision`` objects: sv.Detections of a trained model carry exactly what predict and its
predictions.json say (boxes in original pixels, RLE masks, class ids and names, scores, the image class), empty
and classification-only predictions give well-shaped empty Detections, track ids ride along, keypoints become
sv.KeyPoints, and without the package the error says how to install it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

import fourm21
import fourm21.errors
from fourm21.api import to_supervision, to_supervision_keypoints
from fourm21.inference.model import Fourm21Model
from fourm21.inference.results import image_json, object_entries
from fourm21.inference.supervision import to_detections, to_keypoints
from fourm21.inference.tracking import detection_keys
from fourm21.models.multitask import build_model
from tests.conftest import model_config

sv = pytest.importorskip("supervision")

SIZES = ((48, 80), (90, 50))  # (h, w): neither square nor the 64-pixel input, so the letterbox scale is not 1


@pytest.fixture(scope="module")
def trained(tiny_run):
    """The tiny trained shapes model and its predictions on images of SIZES."""
    _, run_dir, _ = tiny_run
    model = fourm21.load(run_dir / "checkpoints/best.ckpt")
    rng = np.random.default_rng(0)
    images = [(rng.random((h, w, 3)) * 255).astype(np.uint8) for h, w in SIZES]
    return model, images, model.predict(images)


def predictions_json(model: Fourm21Model, pred: dict[str, torch.Tensor], size: tuple[int, int]) -> tuple[dict, list]:
    """An image's entry and its annotations as fourm21-predict writes them to predictions.json (through JSON)."""
    image = image_json(pred, model.meta, model.settings, 1, "a.png", size)
    return json.loads(json.dumps(image)), json.loads(json.dumps(object_entries(pred, model.meta, model.settings)))


def test_detections_are_predict_and_its_json(trained):
    model, images, preds = trained
    assert sum(len(p["boxes"]) for p in preds) > 0  # the checks below run on real detections
    cat_ids = model.meta.get("cat_ids")
    for rgb, pred in zip(images, preds):
        h, w = rgb.shape[:2]
        det = to_supervision(pred, model)
        image, entries = predictions_json(model, pred, (h, w))
        n = len(entries)
        assert isinstance(det, sv.Detections) and len(det) == n == len(pred["boxes"])
        assert det.xyxy.dtype == np.float32 and det.xyxy.shape == (n, 4)
        np.testing.assert_allclose(det.xyxy, np.array([e["bbox"] for e in entries]).reshape(-1, 4), atol=1e-3)
        assert (det.xyxy[:, 2] <= w).all() and (det.xyxy[:, 3] <= h).all()
        np.testing.assert_allclose(det.confidence, [e["score"] for e in entries], atol=1e-5)
        assert np.array_equal(det.confidence, pred["scores"].numpy())
        assert np.issubdtype(det.class_id.dtype, np.integer)
        assert [cat_ids[c] if cat_ids else c + 1 for c in det.class_id.tolist()] == [e["category_id"] for e in entries]
        assert det.data["class_name"].tolist() == [e["category_name"] for e in entries]
        assert det.data["class_name"].tolist() == [model.class_names[c] for c in det.class_id]
        assert det.mask.dtype == bool and det.mask.shape == (n, h, w)
        for mask, e in zip(det.mask, entries):
            rle = dict(e["segmentation"], counts=e["segmentation"]["counts"].encode("ascii"))
            assert np.array_equal(mask, mask_utils.decode(rle).astype(bool))
        assert det.tracker_id is None and "keypoints" not in det.data
        assert det.metadata["classification"] == image["classification"]
        assert det.metadata["classification"]["class_name"] in model.image_class_names


def test_predict_output_supervision_and_the_top_level_function(trained):
    model, images, preds = trained
    dets = model.predict(images, output="supervision")
    assert len(dets) == len(images) and all(isinstance(d, sv.Detections) for d in dets)
    for det, pred in zip(dets, preds):
        top = fourm21.to_supervision(pred, model)
        assert np.array_equal(det.xyxy, top.xyxy) and np.array_equal(det.class_id, top.class_id)
        assert np.array_equal(det.mask, top.mask) and det.metadata == top.metadata
    with pytest.raises(fourm21.errors.ConfigError, match="output: 'dict' or 'supervision'"):
        model.predict(images, output="sv")


def test_supervision_tools_take_the_detections(trained):
    model, images, preds = trained
    det = to_supervision(preds[0], model)
    scene = images[0].copy()
    for annotator in (sv.MaskAnnotator(), sv.BoxAnnotator()):
        scene = annotator.annotate(scene, det)
    scene = sv.LabelAnnotator().annotate(scene, det, labels=list(det.data["class_name"]))
    assert scene.shape == images[0].shape
    kept = det[det.confidence >= np.median(det.confidence)]
    assert len(kept) >= 1 and kept.mask.shape[1:] == images[0].shape[:2]
    assert kept.data["class_name"].shape == (len(kept),)


def test_no_detections_give_empty_well_shaped_detections(trained):
    model, images, preds = trained
    h, w = images[0].shape[:2]
    none = {k: v[:0] if k in detection_keys() else v for k, v in preds[0].items()}
    det = to_supervision(none, model)
    assert len(det) == 0 and det.is_empty()
    assert det.xyxy.shape == (0, 4) and det.xyxy.dtype == np.float32
    assert det.mask.shape == (0, h, w) and det.mask.dtype == bool
    assert det.confidence.shape == (0,) and det.class_id.shape == (0,) and det.data["class_name"].shape == (0,)
    assert det.metadata["classification"]["class_name"] in model.image_class_names  # the image still has its class
    image_only = {k: v for k, v in preds[0].items() if k not in detection_keys()}
    det = to_supervision(image_only, model)  # a classification-only model
    assert len(det) == 0 and det.xyxy.shape == (0, 4) and det.mask is None
    assert det.metadata["classification"] == to_supervision(preds[0], model).metadata["classification"]


def hand_made(n: int, h: int = 40, w: int = 60) -> dict[str, torch.Tensor]:
    """``n`` detections with known boxes, box-shaped masks, 2 keypoints (the box corners) and track ids."""
    boxes = torch.tensor([[4.0 + 10 * i, 5.0, 12.0 + 10 * i, 30.0] for i in range(n)]).reshape(-1, 4)
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
        masks[i, y0:y1, x0:x1] = True
    vis = torch.tensor([0.9, 0.2]).expand(n, 2)
    keypoints = torch.stack([boxes[:, :2], boxes[:, 2:]], 1)
    return {"boxes": boxes, "scores": torch.linspace(0.9, 0.5, n), "labels": torch.arange(n) % 2, "masks": masks,
            "keypoints": torch.cat([keypoints, vis[..., None]], -1), "track_ids": torch.arange(n) + 7}


def test_track_ids_and_keypoints_ride_along():
    pred = hand_made(3)
    det = to_detections(pred, {"class_names": ["circle", "square"]})
    assert det.tracker_id.tolist() == [7, 8, 9] and np.issubdtype(det.tracker_id.dtype, np.integer)
    assert det.class_id.tolist() == [0, 1, 0] and det.data["class_name"].tolist() == ["circle", "square", "circle"]
    assert det.data["keypoints"].shape == (3, 2, 3) and np.array_equal(det.data["keypoints"], pred["keypoints"])
    assert det.metadata == {}  # no settings: no image-level fields
    picked = det[np.array([False, True, True])]  # supervision's indexing keeps every field in step
    assert picked.tracker_id.tolist() == [8, 9] and picked.data["keypoints"][0, 1, 0] == 22.0
    assert to_detections(hand_made(2), {}).data["class_name"].tolist() == ["0", "1"]  # no names: the ids


def test_keypoints_become_sv_keypoints():
    pred = hand_made(2)
    kp = to_keypoints(pred, {"class_names": ["circle", "square"]})
    assert isinstance(kp, sv.KeyPoints) and len(kp) == 2
    assert kp.xy.dtype == np.float32 and kp.xy.shape == (2, 2, 2)
    assert np.array_equal(kp.xy, pred["keypoints"][..., :2]) and kp.xy[1, 1].tolist() == [22.0, 30.0]
    assert np.allclose(kp.keypoint_confidence, [[0.9, 0.2]] * 2)
    assert np.allclose(kp.detection_confidence, pred["scores"]) and kp.class_id.tolist() == [0, 1]
    assert kp.data["class_name"].tolist() == ["circle", "square"] and kp.data["tracker_id"].tolist() == [7, 8]
    scene = sv.VertexAnnotator().annotate(np.zeros((40, 60, 3), np.uint8), kp)
    assert scene.any()
    with pytest.raises(ValueError, match="no keypoints"):
        to_keypoints({"boxes": torch.zeros(0, 4)})


def test_keypoints_for_supervision_before_0_29(monkeypatch):
    """Older supervision names the per-point array ``confidence`` and has no detection confidence."""
    seen = {}

    class OldKeyPoints:
        def __init__(self, xy, class_id=None, confidence=None, data=None):
            seen.update(xy=xy, class_id=class_id, confidence=confidence, data=data)

    monkeypatch.setattr(sv, "KeyPoints", OldKeyPoints)
    pred = hand_made(2)
    to_keypoints(pred, {})
    assert np.allclose(seen["confidence"], [[0.9, 0.2]] * 2)
    assert np.allclose(seen["data"]["detection_confidence"], pred["scores"])


def test_a_keypoint_model_through_the_api():
    cfg = model_config(**{"heads.kpt.enabled": True, "heads.kpt.num_keypoints": 3, "heads.sem.enabled": False})
    torch.manual_seed(0)
    model = Fourm21Model.from_net(build_model(cfg).eval(), cfg, {"img_size": 64, "class_names": ["a", "b", "c"]})
    model.set_thresholds(score_thr=0.001)  # untrained: the prior's scores
    rgb = (np.random.default_rng(2).random((50, 70, 3)) * 255).astype(np.uint8)
    pred = model.predict(rgb)[0]
    assert len(pred["boxes"]) > 0
    det, kp = to_supervision(pred, model), to_supervision_keypoints(pred, model)
    entries = object_entries(pred, model.meta, model.settings, digits=None)
    assert len(det) == len(kp) == len(entries)
    np.testing.assert_allclose(det.data["keypoints"].reshape(len(det), -1), [e["keypoints"] for e in entries],
                               atol=1e-4)
    np.testing.assert_allclose(kp.xy, det.data["keypoints"][..., :2])
    assert (kp.xy[..., 0] <= 70).all() and (kp.xy[..., 1] <= 50).all()  # original pixels, not the 64-pixel input


def test_missing_supervision_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "supervision", None)  # `import supervision` now fails
    for convert in (to_detections, to_keypoints):
        with pytest.raises(ImportError) as err:
            convert(hand_made(1))
        assert 'pip install "fourm21[supervision]"' in str(err.value) and "\n" not in str(err.value)


def test_importing_fourm21_does_not_import_supervision():
    code = ("import sys, fourm21, fourm21.api, fourm21.inference.supervision; "
            "print('supervision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"

