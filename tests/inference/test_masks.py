"""Masks assembled inside their boxes equal upsampling the whole mask and cropping it afterwards."""

import pytest
import torch
from torch.nn import functional as F

from fourm21.errors import ConfigError
from fourm21.inference.decode import DecodeSettings
from fourm21.inference.letterbox import unletterbox
from fourm21.losses.masks import box_crop_weights
from fourm21.models.heads.semantic import SemanticHead
from fourm21.tasks import masks, semantic
from fourm21.tasks.masks import paste_masks
from fourm21.tasks.semantic import semantic_labels
from tests.conftest import model_config


def _random_boxes(n: int, h: int, w: int, g: torch.Generator) -> torch.Tensor:
    centre = torch.rand(n, 2, generator=g) * torch.tensor([w, h])
    half = torch.rand(n, 2, generator=g) * torch.tensor([w, h]) / 2
    return torch.cat([centre - half, centre + half], 1)  # some reach past the image: clipped


@pytest.mark.parametrize("path", ["whole", "numpy", "torch"])  # every mask upsampled whole / each box's crop
@pytest.mark.parametrize(("low", "size"), [((80, 80), (320, 320)), ((16, 16), (64, 64)), ((20, 12), (333, 90)),
                                           ((7, 9), (50, 51))])
def test_paste_equals_full_upsampling_then_box_crop(low, size, path, monkeypatch):
    monkeypatch.setattr(masks, "WHOLE_MASK_MACS", 10**12 if path == "whole" else 0)
    if path == "torch":  # the loop other devices run, here on the CPU
        monkeypatch.setattr(masks, "paste_crops_numpy", masks.paste_crops_torch)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(40, *low, generator=g) * 3
    boxes = _random_boxes(40, *size, g)
    full = F.interpolate(logits[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    reference = (full.sigmoid() * box_crop_weights(boxes, *size)) > 0.5
    got = paste_masks(logits, boxes, size)
    assert got.dtype == torch.bool and got.shape == (40, *size)
    assert torch.equal(got, reference)
    assert 0.02 < got.float().mean() < 0.5  # neither empty nor full: the comparison means something


def test_paste_threshold_empty_and_degenerate_boxes():
    logits = torch.full((3, 4, 4), 0.5)  # probability 0.62 everywhere
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0], [5.0, 5.0, 5.0, 5.0], [20.0, 20.0, 30.0, 30.0]])
    got = paste_masks(logits, boxes, (16, 16), threshold=0.6)
    assert got[0].all() and not got[1].any() and not got[2].any()  # zero-area and off-image boxes: empty
    assert not paste_masks(logits, boxes, (16, 16), threshold=0.7).any()
    assert paste_masks(torch.zeros(0, 4, 4), torch.zeros(0, 4), (16, 16)).shape == (0, 16, 16)


def test_unletterbox_pastes_masks_at_the_original_size():
    """A 100 x 50 image letterboxed into 64 x 64 (scale 0.64: 64 x 32 of image, the rest padding); the
    16 x 16 prototype grid spans the input, so its first 16 x 8 cells cover the image."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 16, 16, generator=g) * 3
    boxes_in = _random_boxes(5, 64, 32, g).clamp(0, 32)
    pred = {"boxes": boxes_in, "mask_logits": logits, "masks": paste_masks(logits, boxes_in, (64, 64))}
    settings = DecodeSettings.from_config(model_config())  # detection + instance masks (mask_thr 0.5)
    out = unletterbox(pred, (100, 50), 0.64, settings)
    assert out["masks"].shape == (5, 100, 50)
    expected_boxes = boxes_in / 0.64
    expected_boxes[:, 0::2] = expected_boxes[:, 0::2].clamp(0, 50)
    expected_boxes[:, 1::2] = expected_boxes[:, 1::2].clamp(0, 100)
    # the whole grid spans 100 x 100 original pixels (the input's padding included): upsample, crop
    full = F.interpolate(logits[:, None], size=(100, 100), mode="bilinear", align_corners=False)[:, 0, :, :50]
    reference = (full > 0) & (box_crop_weights(out["boxes"], 100, 50) > 0)
    assert torch.allclose(out["boxes"], expected_boxes)
    assert torch.equal(out["masks"], reference)


@pytest.mark.parametrize("orig", [(1, 6000), (6000, 1), (2, 600)])
def test_unletterbox_of_an_extreme_aspect_ratio_keeps_a_pixel_of_image(orig):
    """A 6000 x 1 image letterboxed into 64 x 64 is 0.01 px tall there: its image rows are still one row (the
    letterbox resizes it to >= 1 px), not an empty slice that the resize back cannot take."""
    h, w = orig
    scale = 64 / max(h, w)
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 16, 16, generator=g) * 3
    boxes_in = torch.tensor([[0.0, 0.0, 64.0, 64.0]] * 3)
    pred = {"boxes": boxes_in, "mask_logits": logits, "masks": paste_masks(logits, boxes_in, (64, 64)),
            "semantic": torch.randint(0, 4, (64, 64), generator=g)}
    out = unletterbox(pred, orig, scale, DecodeSettings.from_config(model_config()))
    assert out["masks"].shape == (3, h, w) and out["semantic"].shape == (h, w)
    strip = pred["semantic"][0] if h < w else pred["semantic"][:, 0]  # the image's one row (column) of the input
    assert torch.equal(out["semantic"].unique(), strip.unique())  # stretched back to 6000 px, every label kept


def test_semantic_labels_stride_one_is_the_full_argmax_and_stride_s_repeats_cells():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, 10, 12, generator=g)
    full = F.interpolate(logits, size=(40, 48), mode="bilinear", align_corners=False).argmax(1)
    assert torch.equal(semantic_labels(logits, (40, 48)), full)
    coarse = semantic_labels(logits, (40, 48), label_stride=4)
    cells = F.interpolate(logits, size=(10, 12), mode="bilinear", align_corners=False).argmax(1)
    assert coarse.shape == (2, 40, 48)
    assert torch.equal(coarse, cells.repeat_interleave(4, 1).repeat_interleave(4, 2))
    assert (coarse == full).float().mean() > 0.5  # close to the exact map, not the same
    assert semantic_labels(logits, (38, 45), label_stride=4).shape == (2, 38, 45)  # not a multiple of 4


@pytest.mark.parametrize("kwargs", [{"label_stride": 0}, {"loss_stride": 0}, {"label_reduction": "mode"},
                                    {"dice_classes": "some"}])
def test_semantic_head_settings_are_checked(kwargs):
    """A config mistake is a ConfigError naming the key, which the CLIs print in one line."""
    with pytest.raises(ConfigError, match=f"model.heads.sem.{next(iter(kwargs))}"):
        SemanticHead(8, num_classes=3, strides=[8], **kwargs)


def test_semantic_labels_numpy_argmax_equals_torch_with_ties(monkeypatch):
    g = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 3, (2, 6, 9, 7), generator=g).float()  # integer logits: many tied classes
    got = semantic_labels(logits, (36, 28), 4)
    monkeypatch.setattr(semantic, "numpy_ok", lambda t: False)
    assert torch.equal(got, semantic_labels(logits, (36, 28), 4))
    assert got.dtype == torch.long


def test_paste_after_inference_mode_still_works_with_autograd():
    """The cached interpolation matrices are built outside inference mode: reusable where gradients flow."""
    logits = torch.randn(3, 16, 16)
    boxes = torch.tensor([[0.0, 0.0, 30.0, 30.0], [10.0, 5.0, 60.0, 40.0], [2.0, 2.0, 8.0, 9.0]])
    masks.bilinear_matrix.cache_clear()
    with torch.inference_mode():
        first = paste_masks(logits, boxes, (61, 67))  # whole-mask path: the matrices meet the logits in autograd
    again = paste_masks(logits.clone().requires_grad_(), boxes, (61, 67))
    assert torch.equal(first, again)
