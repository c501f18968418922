"""Multi-scale batches: sizes are multiples of 32 within the range, boxes scale with the image, masks and
the semantic mask stay on the painted objects; the size is seeded by (seed, epoch, batch)."""

import cv2
import numpy as np
import pytest
import torch

from fourm21.data.clock import EpochClock
from fourm21.data.coco import CocoDataset
from fourm21.data.collate import collate_samples
from fourm21.data.datamodule import MultiTaskDataModule
from fourm21.data.multiscale import MultiScaleCollate, multiscale_sizes, resize_batch
from fourm21.data.sample import IGNORE_INDEX
from fourm21.data.transforms import build_dense_transform
from fourm21.errors import ConfigError
from tests.conftest import AUG
from tests.data.test_mosaic import BACKGROUND, FILL, _close, paint_coco, to_rgb


@pytest.fixture()
def painted(tmp_path):
    return paint_coco(tmp_path)


def _samples(painted, mask_stride, mosaic=0.0):
    img_dir, ann, _ = painted
    ds = CocoDataset(img_dir, ann, build_dense_transform(64, train=False), mask_stride=mask_stride, mosaic=mosaic)
    return [ds[i] for i in range(len(ds))]


def test_sizes_are_the_multiples_of_the_stride_in_the_range():
    assert multiscale_sizes(64, [0.5, 1.5]) == [32, 64, 96]
    assert multiscale_sizes(64, [0.75, 1.25]) == [64]  # 48-80 px holds one multiple of 32 only
    assert multiscale_sizes(320, [0.5, 1.5]) == list(range(160, 481, 32))
    assert multiscale_sizes(40, [0.9, 1.1]) == []  # none: the batch keeps its size
    with pytest.raises(ConfigError):
        MultiScaleCollate([1.5, 0.5])


def _check_batch_aligned(batch, colours, mask_stride):
    """Each instance's (coverage) mask lies on pixels of its colour, inside its box; semantic agrees."""
    by_colour = {c: cat for c, cat in colours.values()}
    _, _, h, w = batch["image"].shape
    for b in range(len(batch["image"])):
        rgb = to_rgb(batch["image"][b])
        sem = batch["semantic"][b].numpy()
        for box, label, cov in zip(batch["gt_boxes"][b].numpy(), batch["gt_labels"][b].tolist(),
                                   batch["gt_masks"][b].float()):
            if label < 0:
                continue
            # the mask's core back at full resolution: the (nearly) fully covered cells spread over their
            # pixels, less a pixel around the edge (resampling blends the image's edges)
            full = torch.nn.functional.interpolate(cov[None, None], scale_factor=mask_stride, mode="nearest")[0, 0]
            inside = full[:h, :w].numpy() > (0.5 if mask_stride == 1 else 0.95)
            core = cv2.erode(inside.astype(np.uint8), np.ones((3, 3), np.uint8), borderValue=0).astype(bool)
            if core.sum() < 4:
                continue
            colour = min(by_colour, key=lambda c: np.abs(np.median(rgb[core], 0) - c).max())
            assert by_colour[colour] == label
            assert _close(rgb[core], colour, tol=40).mean() >= 0.9
            assert (sem[core] == label + 1).mean() >= 0.9
            ys, xs = np.nonzero(core)  # the mask's core inside its box (a cell of slack)
            slack = mask_stride + 1
            assert xs.min() >= box[0] - slack and xs.max() + 1 <= box[2] + slack
            assert ys.min() >= box[1] - slack and ys.max() + 1 <= box[3] + slack
            assert (box >= -1e-4).all() and box[2] <= w + 1e-4 and box[3] <= h + 1e-4
        for colour, value in ((BACKGROUND, 0), ((FILL,) * 3, IGNORE_INDEX)):
            px = _close(rgb, colour, 1.0)
            if px.sum() > 10:
                assert (sem[px] == value).mean() >= 0.9


@pytest.mark.parametrize("mask_stride", [1, 2, 4])
@pytest.mark.parametrize("size", [32, 96, 128])
def test_resized_batch_stays_aligned_and_boxes_scale(painted, mask_stride, size):
    samples = _samples(painted, mask_stride)
    batch = collate_samples(samples)
    out = resize_batch(batch, (size, size))
    f = size / 64
    assert out["image"].shape == (len(samples), 3, size, size)
    assert out["semantic"].shape == (len(samples), size, size)
    assert out["semantic"].dtype == batch["semantic"].dtype == torch.uint8
    grid = size if mask_stride == 1 else size // mask_stride
    assert out["gt_masks"].shape[-2:] == (grid, grid) and out["gt_masks"].dtype == batch["gt_masks"].dtype
    torch.testing.assert_close(out["gt_boxes"], batch["gt_boxes"] * f)
    assert torch.equal(out["gt_labels"], batch["gt_labels"])
    assert [m["scale"] for m in out["meta"]] == pytest.approx([m["scale"] * f for m in batch["meta"]])
    if mask_stride > 1:  # coverage is an area: it scales with the image's area
        ratio = out["gt_masks"].sum((-1, -2)) / f ** 2 / batch["gt_masks"].sum((-1, -2)).clamp(min=1e-6)
        valid = batch["gt_labels"] >= 0
        assert ((ratio[valid] - 1).abs() < 0.15).all()
    # semantic labels are not blended: only values that were there
    assert set(out["semantic"].unique().tolist()) <= set(batch["semantic"].unique().tolist())
    _check_batch_aligned(out, painted[2], mask_stride)


def test_multiscale_collate_sizes_in_range_and_seeded(painted):
    samples = _samples(painted, 2)
    clock = EpochClock(seed=5)
    collate = MultiScaleCollate([0.5, 1.5], clock=clock)
    sizes = set()
    for epoch in range(12):
        clock.set(epoch=epoch)
        batch = collate(samples[:4])
        again = collate(samples[:4])  # the same batch in the same epoch: the same size
        assert batch["image"].shape == again["image"].shape
        side = batch["image"].shape[-1]
        assert side % 32 == 0 and 32 <= side <= 96 and batch["image"].shape[-2] == side
        sizes.add(side)
        _check_batch_aligned(batch, painted[2], 2)
    assert sizes == {32, 64, 96}  # all three sizes drawn over the epochs
    other = MultiScaleCollate([0.5, 1.5], clock=EpochClock(seed=5))
    other.clock.set(epoch=11)
    assert other(samples[:4])["image"].shape == batch["image"].shape  # a function of (seed, epoch, batch)


def test_multiscale_collate_handles_mosaic_samples_and_empty_batches(painted):
    collate = MultiScaleCollate([1.5, 2.0])
    assert collate([None, None]) is None
    batch = collate(_samples(painted, 2, mosaic=1.0))
    assert batch["image"].shape[-1] in (96, 128)
    _check_batch_aligned(batch, painted[2], 2)


def test_datamodule_uses_multiscale_for_training_loaders_only(painted):
    img_dir, ann, _ = painted

    def factory():
        return CocoDataset(img_dir, ann, build_dense_transform(64, train=True, **AUG), mask_stride=2)

    dm = MultiTaskDataModule(train=factory, val=factory, batch_size=3, multiscale=[0.5, 1.5], seed=1)
    dm.setup("fit")
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert isinstance(train.collate_fn, MultiScaleCollate) and train.collate_fn.clock is dm.clock
    assert val.collate_fn is collate_samples
    sides = set()
    for epoch in range(4):
        train.sampler.set_epoch(epoch)
        sides |= {b["image"].shape[-1] for b in train}
        assert dm.clock.epoch == epoch  # without a trainer, the sampler's epoch
    assert sides <= {32, 64, 96} and len(sides) > 1
    assert {b["image"].shape[-1] for b in val} == {64}
    plain = MultiTaskDataModule(train=factory, val=factory, batch_size=3)
    assert plain.train_collate is collate_samples


def test_image_level_batches_keep_their_size():
    """CIFAR batches of a mixed run: no boxes, no semantic mask, nothing to rescale for."""
    samples = [{"image": torch.randn(3, 32, 32), "label": i, "meta": {"image_id": i, "source": "cifar10"}}
               for i in range(4)]
    batch = MultiScaleCollate([2.0, 3.0])(samples)
    assert batch["image"].shape == (4, 3, 32, 32)
