"""The one decoder: batched detections against a plain per-image reference, settings from net and config."""

import pytest
import torch
from torchvision.ops import batched_nms

from fourm21.inference.decode import DecodeSettings, decode, decode_batch, split_images
from fourm21.losses.detection import decode_ltrb
from fourm21.models.multitask import build_model
from tests.conftest import model_config


def _per_image_reference(raw: dict, size: tuple[int, int], s: DecodeSettings) -> list[tuple]:
    """Image by image, the textbook way: top-k, threshold, per-class NMS, max_det."""
    scores = (raw["cls_logits"].sigmoid() * raw["centerness"].sigmoid()[..., None]).sqrt()
    s = s.of("det")
    out = []
    for i in range(scores.shape[0]):
        flat = scores[i].flatten()
        top_s, top_i = flat.topk(min(s["pre_nms_topk"], flat.numel()))
        keep = top_s > s["score_thr"]
        top_s, top_i = top_s[keep], top_i[keep]
        loc, lab = top_i // scores.shape[-1], top_i % scores.shape[-1]
        boxes = decode_ltrb(raw["points"][loc], raw["box_ltrb"][i, loc])
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, size[1])
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, size[0])
        kept = batched_nms(boxes, top_s, lab, s["iou_thr"])[: s["max_det"]]
        out.append((boxes[kept], top_s[kept], lab[kept], loc[kept]))
    return out


@pytest.mark.parametrize("batch", [4, 1])  # one image: max_det by a slice, the kept rows a slice (no copies)
@pytest.mark.parametrize("pre_nms_topk", [1000, 30])  # all locations / far fewer than them: two-stage top-k
def test_batched_detections_equal_the_per_image_reference(pre_nms_topk, batch):
    torch.manual_seed(1)
    net = build_model(model_config(**{"heads.det.score_thr": 0.06, "heads.det.max_det": 7,
                                      "heads.det.pre_nms_topk": pre_nms_topk})).eval()
    s = DecodeSettings.from_net(net)
    with torch.no_grad():
        raw = net(torch.randn(batch, 3, 64, 64))
    preds = decode(raw, (64, 64), s)
    ref = _per_image_reference(raw["det"], (64, 64), s)
    assert sum(len(p["scores"]) for p in preds) >= min(batch, 4) * 2  # something to compare
    assert all(len(p["scores"]) == 7 for p in preds)  # max_det cut some: that path is compared too
    for i, (p, (boxes, scores, labels, locs)) in enumerate(zip(preds, ref)):
        torch.testing.assert_close(p["scores"], scores)
        torch.testing.assert_close(p["boxes"], boxes)
        assert torch.equal(p["labels"], labels) and torch.equal(p["locations"], locs)
        assert len(p["scores"]) <= 7
        # each kept detection's mask: its coefficients times its own image's prototypes
        want = torch.einsum("nk,khw->nhw", raw["inst"]["coefs"][i, locs], raw["inst"]["proto"][i])
        torch.testing.assert_close(p["mask_logits"], want)
        assert p["masks"].shape == (len(scores), 64, 64)


def test_one_image_mask_logits_are_its_coefficients_times_its_prototypes():
    torch.manual_seed(3)
    net = build_model(model_config(**{"heads.det.score_thr": 0.05, "heads.det.max_det": 9})).eval()
    with torch.no_grad():
        raw = net(torch.randn(1, 3, 64, 64))  # batch 1: decoded by one product, no per-image loop
    (p,) = decode(raw, (64, 64), DecodeSettings.from_net(net))
    assert len(p["locations"]) > 2
    want = torch.einsum("nk,khw->nhw", raw["inst"]["coefs"][0, p["locations"]], raw["inst"]["proto"][0])
    torch.testing.assert_close(p["mask_logits"], want)


def test_settings_from_the_config_equal_those_of_the_built_heads():
    cfg = model_config(**{"heads.det.score_thr": 0.21, "heads.sem.label_stride": 4})
    net = build_model(cfg)
    assert DecodeSettings.from_config(cfg) == DecodeSettings.from_net(net)
    assert DecodeSettings.from_config(cfg).of("det")["score_thr"] == 0.21


def test_higher_thresholds_apply_to_an_already_decoded_batch():
    torch.manual_seed(2)
    net = build_model(model_config(**{"heads.det.score_thr": 0.0})).eval()
    s = DecodeSettings.from_net(net)
    with torch.no_grad():
        flat = decode_batch(net(torch.randn(2, 3, 64, 64)), (64, 64), s)
    loose = split_images(flat, 2, (64, 64), s)
    strict = split_images(flat, 2, (64, 64), s.with_overrides(score_thr=0.4, max_det=2))
    for a, b in zip(loose, strict):
        keep = a["scores"] > 0.4
        torch.testing.assert_close(b["scores"], a["scores"][keep][:2])
        assert len(b["scores"]) <= 2


def test_an_image_keeping_every_detection_shares_the_mask_logits_and_a_stricter_one_copies():
    torch.manual_seed(4)
    net = build_model(model_config(**{"heads.det.score_thr": 0.05, "heads.det.max_det": 9})).eval()
    s = DecodeSettings.from_net(net)
    with torch.no_grad():
        flat = decode_batch(net(torch.randn(1, 3, 64, 64)), (64, 64), s)
    (every,) = split_images(flat, 1, (64, 64), s)
    assert every["mask_logits"].data_ptr() == flat["det_mask_logits"].data_ptr()  # a view: nothing was dropped
    strict = s.with_overrides(score_thr=float(every["scores"][3]))  # drops the 4th and later
    (fewer,) = split_images(flat, 1, (64, 64), strict)
    assert len(fewer["scores"]) == 3 and fewer["mask_logits"].data_ptr() != flat["det_mask_logits"].data_ptr()
    torch.testing.assert_close(fewer["mask_logits"], every["mask_logits"][:3])
    assert torch.equal(fewer["masks"], every["masks"][:3]) and torch.equal(fewer["boxes"], every["boxes"][:3])
