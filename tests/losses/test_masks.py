"""Mask losses at the network's resolution agree with the full-resolution computation where they must."""

import numpy as np
import pytest
import torch

from fourm21.data.coco import mask_coverage
from fourm21.data.sample import IGNORE_INDEX
from fourm21.losses.masks import prototype_mask_loss, reduce_labels, semantic_loss


def _block_labels(b: int, cells: int, stride: int, num_classes: int, seed: int = 0) -> torch.Tensor:
    """(B, cells*s, cells*s) labels constant on every s x s cell, some cells ignored."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, num_classes, (b, cells, cells), generator=g)
    coarse[:, 0, :2] = IGNORE_INDEX
    return coarse.repeat_interleave(stride, 1).repeat_interleave(stride, 2)


@pytest.mark.parametrize("dice_classes", ["present", "all"])
@pytest.mark.parametrize("reduction", ["majority", "nearest"])
def test_semantic_loss_at_stride_equals_full_resolution_on_block_labels(dice_classes, reduction):
    stride, cells, c = 8, 5, 6
    target = _block_labels(3, cells, stride, num_classes=4)  # classes 4 and 5 absent
    # logits constant over each image: bilinear upsampling is exact, so only the label grid differs
    base = torch.randn(3, c, 1, 1, requires_grad=True)
    logits = base.expand(3, c, cells, cells)
    valid = torch.tensor([True, False, True])
    full = semantic_loss(logits, target, valid, 0.5, loss_stride=1, dice_classes=dice_classes)
    coarse = semantic_loss(logits, target, valid, 0.5, loss_stride=stride, label_reduction=reduction,
                           dice_classes=dice_classes)
    for key in ("ce", "dice"):
        assert torch.allclose(full[key], coarse[key], atol=1e-5), (key, full[key], coarse[key])
    g_full = torch.autograd.grad(full["ce"] + full["dice"], base)[0]
    g_coarse = torch.autograd.grad(coarse["ce"] + coarse["dice"], base)[0]
    assert torch.allclose(g_full, g_coarse, atol=1e-6)


def test_semantic_dice_over_present_classes_ignores_absent_ones():
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[:, :4] = 1
    logits = torch.zeros(1, 5, 8, 8)
    present = semantic_loss(logits, target, torch.tensor([True]), 1.0, dice_classes="present")["dice"]
    every = semantic_loss(logits, target, torch.tensor([True]), 1.0, dice_classes="all")["dice"]
    # uniform probabilities: each absent class adds a dice of ~0.93 to "all", none to "present"
    assert every > present + 0.1
    assert present.item() == pytest.approx(1 - (2 * 32 * 0.2 + 1) / (64 * 0.2 + 32 + 1), rel=1e-5)


def test_reduce_labels_majority_and_nearest():
    t = torch.tensor([[[1, 1, 2, 2],
                       [1, 3, 2, IGNORE_INDEX],
                       [IGNORE_INDEX, IGNORE_INDEX, 0, 3],
                       [IGNORE_INDEX, IGNORE_INDEX, 3, 3]]])
    assert reduce_labels(t, 2, 4, "majority").tolist() == [[[1, 2], [IGNORE_INDEX, 3]]]
    assert reduce_labels(t, 2, 4, "nearest").tolist() == [[[3, IGNORE_INDEX], [IGNORE_INDEX, 3]]]
    # sizes that are not multiples of the stride: the last cell holds the remainder, padding is ignored
    odd = torch.full((1, 5, 3), 2)
    assert reduce_labels(odd, 2, 4, "majority").tolist() == [[[2, 2], [2, 2], [2, 2]]]
    with pytest.raises(ValueError, match="label reduction"):
        reduce_labels(t, 2, 4, "mode")


def test_mask_coverage_is_the_fraction_of_each_cell():
    m = torch.zeros(2, 8, 6, dtype=torch.bool)
    m[0, :2, :2] = True
    m[1, 1, 1] = True
    cov = mask_coverage(m, 4)
    assert cov.shape == (2, 2, 2)
    assert cov[0, 0, 0] == pytest.approx(4 / 16) and cov[1, 0, 0] == pytest.approx(1 / 16)
    assert cov.sum() * 16 == pytest.approx(float(m.sum()))
    assert mask_coverage(m, 1) is m


def test_instance_loss_with_coverage_targets_equals_full_resolution_masks():
    torch.manual_seed(0)
    b, k, hp, size, stride = 2, 4, 16, 64, 4
    proto = torch.randn(b, k, hp, hp, requires_grad=True)
    coefs = torch.randn(b, 10, k, requires_grad=True)
    gt_boxes = torch.tensor([[[8.0, 4, 40, 36], [20, 20, 60, 60]], [[0, 0, 32, 64], [0, 0, 0, 0]]])
    masks = torch.zeros(b, 2, size, size, dtype=torch.bool)
    masks[0, 0, 8:32, 8:36] = True  # block-aligned (multiples of 4): full-res bilinear = coverage
    masks[0, 1, 24:56, 20:60] = True
    masks[1, 0, 0:64, 0:28] = True
    matched = torch.full((b, 10), -1)
    matched[0, [1, 3, 5]] = torch.tensor([0, 1, 0])
    matched[1, [2, 7]] = 0
    valid = torch.tensor([True, True])
    cov = mask_coverage(masks.flatten(0, 1), stride).view(b, 2, hp, hp)
    full = prototype_mask_loss(proto, coefs, matched, masks, gt_boxes, valid, (size, size))
    lean = prototype_mask_loss(proto, coefs, matched, cov, gt_boxes, valid, (size, size))
    for key in ("bce", "dice"):
        assert torch.allclose(full[key], lean[key], atol=1e-6)
    assert full["bce"] > 0 and full["dice"] > 0
    g = torch.autograd.grad(lean["bce"] + lean["dice"], [proto, coefs])
    assert all(x.abs().sum() > 0 for x in g)
    # sampling positives keeps image order, so max_pos below the count still pairs coefficients and prototypes
    sub = prototype_mask_loss(proto, coefs, matched, cov, gt_boxes, valid, (size, size), max_pos=5)
    assert torch.allclose(sub["bce"], lean["bce"])


def test_mask_coverage_numpy_and_torch_paths_agree():
    rng = np.random.default_rng(0)
    m = rng.random((5, 30, 22)) > 0.6  # sizes not multiples of the stride
    a = mask_coverage(m, 4)
    b = mask_coverage(torch.from_numpy(m), 4)
    assert a.shape == b.shape == (5, 8, 6)
    assert torch.allclose(a, b, atol=0.5 / 255 + 1e-6)  # the NumPy path averages 0/255 bytes
    assert mask_coverage(np.zeros((0, 8, 8), dtype=bool), 4).shape == (0, 2, 2)
