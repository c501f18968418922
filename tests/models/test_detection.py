import torch

from fourm21.inference.decode import DecodeSettings, decode
from fourm21.losses.detection import fcos_assign, level_ranges
from fourm21.models.heads.detection import DetectionHead, make_points


def _raw_with_boxes(head, boxes, scores, labels, size=32):
    """Raw head output whose locations decode to the given boxes with the given class scores."""
    points, strides = make_points([(size // 8, size // 8)], [8], torch.device("cpu"))
    n_loc = len(points)
    cls = torch.full((1, n_loc, head.num_classes), -20.0)
    ltrb = torch.ones(1, n_loc, 4)
    for i, (box, score, label) in enumerate(zip(boxes, scores, labels)):
        px, py = points[i]
        ltrb[0, i] = torch.tensor([px - box[0], py - box[1], box[2] - px, box[3] - py])
        cls[0, i, label] = torch.logit(torch.tensor(score**2))  # score = sqrt(class prob * centerness)
    return {"det": {"cls_logits": cls, "box_ltrb": ltrb, "centerness": torch.full((1, n_loc), 20.0),
                    "points": points, "point_strides": strides}}


def test_nms_removes_duplicates_and_keeps_classes_apart():
    head = DetectionHead(16, num_classes=2, strides=[8], score_thr=0.1, iou_thr=0.5)
    boxes = [[2, 2, 20, 20], [3, 3, 20, 21], [2, 2, 20, 20], [24, 24, 31, 31]]
    raw = _raw_with_boxes(head, boxes, scores=[0.9, 0.8, 0.7, 0.6], labels=[0, 0, 1, 0])
    p = decode(raw, (32, 32), DecodeSettings.from_heads({"det": head}))[0]
    # the 0.8 box duplicates the 0.9 one (same class) and goes; the class-1 box on the same spot stays
    assert sorted(p["scores"].tolist(), reverse=True) == p["scores"].tolist()
    assert torch.allclose(p["scores"], torch.tensor([0.9, 0.7, 0.6]), atol=1e-4)
    assert p["labels"].tolist() == [0, 1, 0]


def test_score_threshold_and_max_det():
    head = DetectionHead(16, num_classes=1, strides=[8], score_thr=0.5, iou_thr=0.5, max_det=1)
    raw = _raw_with_boxes(head, [[0, 0, 8, 8], [16, 16, 30, 30], [0, 16, 8, 30]], [0.9, 0.8, 0.3], [0, 0, 0])
    preds = decode(raw, (32, 32), DecodeSettings.from_heads({"det": head}))
    assert len(preds[0]["scores"]) == 1
    assert abs(preds[0]["scores"].item() - 0.9) < 1e-4


def test_assignment_picks_the_smallest_box_and_respects_levels():
    points, strides = make_points([(8, 8), (4, 4)], [4, 8], torch.device("cpu"))
    ranges = torch.tensor(level_ranges([4, 8], 4.0))
    level = (strides == 8).long()
    gt = torch.tensor([[[0.0, 0, 32, 32], [10, 10, 18, 18], [0, 0, 0, 0]]])
    labels = torch.tensor([[0, 1, -1]])
    matched = fcos_assign(points, ranges[level], strides, gt, labels, radius=1.5)
    assert matched.shape == (1, len(points))
    assert (matched != 2).all(), "padding boxes are never matched"
    small = matched[0] == 1
    assert small.any() and (strides[small] == 4).all()  # small box: max distance <= 16 -> stride-4 level
    big = matched[0] == 0
    assert big.any() and (strides[big] == 8).all()  # 32-pixel box: max distance 16..32 -> stride-8 level
    # locations inside the small box's centre region go to it rather than to the big box
    centre = ((points - 14).abs().amax(1) < 4) & (strides == 4)
    assert (matched[0][centre] == 1).all()
