"""The keypoint task: its loss (zero at the target, growing with the error, invariant to the object's scale),
decoding with the detections it rides with, original pixels, COCO keypoint results scored by pycocotools,
the skeleton drawn on an overlay, and its config checks."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from fourm21.errors import ConfigError
from fourm21.inference.decode import DecodeSettings, decode
from fourm21.inference.render import draw_frame
from fourm21.metrics.coco import coco_evaluate
from fourm21.models.heads.keypoints import KeypointHead
from fourm21.tasks.keypoints import COCO_PERSON_SIGMAS, KeypointTask, keypoint_loss, sigmas_for

K = 3


def _case(scale: float, error: float):
    """One image, one object (a box of side 20 * scale), one positive location whose keypoints are off by
    ``error`` * scale pixels in x."""
    gt = torch.tensor([[[[10.0, 10.0, 2], [20.0, 15.0, 2], [0.0, 0.0, 0]]]]) * torch.tensor([scale, scale, 1])
    boxes = torch.tensor([[[5.0, 5.0, 25.0, 25.0]]]) * scale
    pred = gt[0, 0, :, :2].clone()[None, None]  # (B=1, L=1, K, 2)
    pred[..., 0] += error * scale
    logits = torch.tensor([[[5.0, 5.0, -5.0]]])
    return pred, logits, torch.tensor([[0]]), gt, boxes, torch.tensor([True]), torch.full((K,), 0.1)


def test_loss_is_zero_at_the_target_grows_with_the_error_and_ignores_scale():
    at = keypoint_loss(*_case(1.0, 0.0))
    assert at["oks"] == 0 and at["l1"] == 0 and at["vis"] < 0.01
    small, big = keypoint_loss(*_case(1.0, 1.0)), keypoint_loss(*_case(1.0, 4.0))
    assert 0 < small["oks"] < big["oks"] and 0 < small["l1"] < big["l1"]
    scaled = keypoint_loss(*_case(3.0, 1.0))  # three times the object, three times the error: the same loss
    assert torch.allclose(scaled["oks"], small["oks"]) and torch.allclose(scaled["l1"], small["l1"])
    # the unlabelled third point (v = 0) carries no position loss, whatever is predicted there
    case = list(_case(1.0, 0.0))
    case[0] = case[0].clone()
    case[0][0, 0, 2] += 50
    assert keypoint_loss(*case)["oks"] == 0


def test_loss_skips_background_and_samples_without_keypoints():
    pred, logits, _, gt, boxes, valid, sig = _case(1.0, 2.0)
    none = keypoint_loss(pred, logits, torch.tensor([[-1]]), gt, boxes, valid, sig)
    assert none["oks"] == 0 and none["l1"] == 0 and none["vis"] == 0
    off = keypoint_loss(pred, logits, torch.tensor([[0]]), gt, boxes, torch.tensor([False]), sig)
    assert off["oks"] == 0 and off["vis"] == 0


def test_sigmas_default_to_coco_person_for_17_keypoints():
    assert sigmas_for(17, 0.1) == list(COCO_PERSON_SIGMAS) and sigmas_for(5, 0.07) == [0.07] * 5


def _head() -> KeypointHead:
    torch.manual_seed(0)
    return KeypointHead(8, [4, 8], K, [0.1] * K, ["a", "left", "right"], [[1, 2], [1, 3]], num_convs=1)


def test_head_points_are_pixels_around_each_location():
    head = _head()
    feats = [torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2)]
    out = head(feats)
    assert out["kpt_xy"].shape == (2, 20, K, 2) and out["kpt_logits"].shape == (2, 20, K)
    # a fresh head predicts (about) the location's centre: stride 4 cell (1, 2) -> (10, 6)
    assert torch.allclose(out["kpt_xy"][0, 1 * 4 + 2], torch.tensor([10.0, 6.0]).expand(K, 2), atol=1.0)


def test_decoded_keypoints_ride_with_their_detection_to_original_pixels():
    """Decoded through the one decoder: each kept detection gets the keypoints of the location it came from."""
    from fourm21.models.heads.detection import DetectionHead
    from fourm21.tasks.detection import DetectionTask

    det = DetectionHead(8, 3, [4, 8], num_convs=1, score_thr=0.5)
    head = _head()
    feats = [torch.randn(1, 8, 4, 4), torch.randn(1, 8, 2, 2)]
    with torch.no_grad():
        outputs = {"det": det(feats), "kpt": head(feats)}
    outputs["det"]["cls_logits"][:] = -10
    outputs["det"]["cls_logits"][0, 5, 1] = 10  # one confident location
    outputs["det"]["centerness"][:] = 10
    s = DecodeSettings({"det": DetectionTask(), "kpt": KeypointTask()},
                       {"det": DetectionTask().settings(det), "kpt": KeypointTask().settings(head)})
    pred = decode(outputs, (16, 16), s)[0]
    assert len(pred["boxes"]) == 1 and pred["keypoints"].shape == (1, K, 3)
    assert torch.allclose(pred["keypoints"][0, :, :2], outputs["kpt"]["kpt_xy"][0, 5])
    assert torch.allclose(pred["keypoints"][0, :, 2], outputs["kpt"]["kpt_logits"][0, 5].sigmoid())
    out: dict = {}
    KeypointTask().to_original(pred, out, (40, 40), 0.5, s.of("kpt"))
    assert torch.allclose(out["keypoints"][..., :2], (pred["keypoints"][..., :2] * 2).clamp(0, 40))


def test_coco_results_scored_by_pycocotools_keypoints(tmp_path):
    """Results from ``annotations`` score 1.0 when they are the ground truth and less when moved, with the
    sigmas passed to COCOeval."""
    from pycocotools.coco import COCO

    gt = {"images": [{"id": 1, "width": 100, "height": 100, "file_name": "a.png"}],
          "categories": [{"id": 1, "name": "shape", "keypoints": ["a", "b", "c"], "skeleton": []}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600,
                           "iscrowd": 0, "keypoints": [20, 20, 2, 40, 30, 2, 30, 45, 1], "num_keypoints": 3}]}
    coco = COCO()
    coco.dataset = copy.deepcopy(gt)
    coco.createIndex()
    task = KeypointTask()

    def results(shift: float) -> list[dict]:
        pred = {"keypoints": torch.tensor([[[20.0 + shift, 20, 0.9], [40, 30, 0.9], [30, 45, 0.8]]])}
        entries = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.9}]
        return task.annotations(pred, entries, {}, False, 5)

    exact = results(0.0)
    assert exact[0]["keypoints"] == [20.0, 20.0, 0.9, 40.0, 30.0, 0.9, 30.0, 45.0, 0.8]
    params = task.coco_params({"sigmas": [0.1] * 3}, type("D", (), {"keypoint_names": ["a", "b", "c"]})())
    stats, _ = coco_evaluate(coco, exact, [1], "keypoints", params)
    assert stats["map"] == pytest.approx(1.0) and set(stats) >= {"map50", "map75", "mar"}
    far, _ = coco_evaluate(coco, results(12.0), [1], "keypoints", params)
    tight, _ = coco_evaluate(coco, results(12.0), [1], "keypoints",
                             {"kpt_oks_sigmas": np.array([0.01] * 3)})
    assert far["map"] < 1.0 and tight["map"] < far["map"]  # the sigmas reach COCOeval
    assert task.coco_params({"sigmas": [0.1] * 3}, object()) is None  # a set without keypoints is not scored


def test_the_skeleton_is_drawn_on_the_overlay():
    head = _head()
    s = DecodeSettings({"kpt": KeypointTask()}, {"kpt": KeypointTask().settings(head)})
    image = np.zeros((64, 64, 3), np.uint8)
    pred = {"boxes": torch.tensor([[4.0, 4.0, 60.0, 60.0]]), "scores": torch.tensor([0.9]),
            "labels": torch.tensor([0]), "keypoints": torch.tensor([[[32.0, 32, 0.9], [8, 32, 0.9], [56, 32, 0.1]]])}
    plain = draw_frame(image, pred, ["shape"], [], min_side=64)
    drawn = draw_frame(image, pred, ["shape"], [], min_side=64, settings=s)
    changed = (drawn != plain).any(-1)
    assert changed[32, 12:30].all()  # the edge centre-left (both visible) is a line
    assert not changed[32, 40:50].any()  # the edge to the hidden third point (0.1 < kpt_thr) is not


def test_config_checks_name_the_key():
    task = KeypointTask()
    cfg = OmegaConf.create({"data": {"name": "shapes", "num_keypoints": 3}})

    def head(**kw):
        return OmegaConf.create({"num_keypoints": 3, "kpt_thr": 0.5, "sigmas": [0.1] * 3, "skeleton": [[1, 2]], **kw})

    task.check_config(cfg, "kpt", head())
    with pytest.raises(ConfigError, match=r"model.heads.kpt.sigmas has 2 entries for 3 keypoints"):
        task.check_config(cfg, "kpt", head(sigmas=[0.1, 0.1]))
    with pytest.raises(ConfigError, match=r"model.heads.kpt.skeleton: \[1, 4\]"):
        task.check_config(cfg, "kpt", head(skeleton=[[1, 4]]))
    with pytest.raises(ConfigError, match=r"model.heads.kpt.kpt_thr"):
        task.check_config(cfg, "kpt", head(kpt_thr=2))
    with pytest.raises(ConfigError, match=r"model.heads.kpt.num_keypoints is 0"):
        task.check_config(OmegaConf.create({"data": {"name": "coco", "num_keypoints": 0}}), "kpt",
                          head(num_keypoints=0, sigmas=None))
