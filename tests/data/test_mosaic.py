"""Mosaic: image, instance masks, semantic mask and boxes stay aligned; close_mosaic; seeded; p=0 is a no-op.

The images are painted with solid objects, one distinct colour per instance (painted from the very
masks pycocotools decodes), so every target can be checked against the pixels of the output image.
"""

import json
import types

import cv2
import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from fourm21.data.coco import CocoDataset
from fourm21.data.datamodule import MultiTaskDataModule
from fourm21.data.mosaic import MosaicItem, mosaic4
from fourm21.data.sample import IGNORE_INDEX
from fourm21.data.transforms import build_dense_transform
from fourm21.errors import DatasetError
from tests.conftest import AUG

BACKGROUND = (30, 30, 30)
FILL = 114  # the mosaic's and letterbox's grey
SIZES = [(64, 64), (48, 64), (64, 40), (64, 64), (40, 56), (64, 48)]  # (h, w): some letterboxed, some resized
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
           (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180)]


def _circle(cx, cy, r, n=20):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1).ravel().round(1).tolist()


def _rect(x0, y0, x1, y1):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def paint_coco(root, sizes=SIZES):
    """Images with 2-3 non-overlapping solid objects each, one palette colour per instance (18 in all).

    Returns (img_dir, ann_file, colours): ``colours[annotation id] = (rgb, contiguous category)``."""
    img_dir = root / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    images, anns, colours = [], [], {}
    aid = 0
    for i, (h, w) in enumerate(sizes):
        image = np.empty((h, w, 3), np.uint8)
        image[:] = BACKGROUND
        shapes = [("rect", _rect(2, 3, w // 2 - 2, h // 2 - 3)),
                  ("circle", _circle(w * 0.72, h * 0.3, min(h, w) * 0.16)),
                  ("rect", _rect(w // 4, h * 0.6, w * 0.9, h - 2))][: 2 + i % 2]
        for kind, poly in shapes:
            rle = mask_utils.merge(mask_utils.frPyObjects([poly], h, w))
            m = mask_utils.decode(rle).astype(bool)
            colour = PALETTE[aid % len(PALETTE)]
            image[m] = colour
            x, y, bw, bh = mask_utils.toBbox(rle).tolist()
            cat = 1 if kind == "rect" else 2
            anns.append({"id": aid + 1, "image_id": i + 1, "category_id": cat, "bbox": [x, y, bw, bh],
                         "area": float(m.sum()), "iscrowd": 0, "segmentation": [poly]})
            colours[aid + 1] = (colour, cat - 1)
            aid += 1
        Image.fromarray(image).save(img_dir / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": h, "width": w})
    ann_file = root / "instances.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": anns,
                                    "categories": [{"id": 1, "name": "rect"}, {"id": 2, "name": "circle"}]}))
    return img_dir, ann_file, colours


@pytest.fixture()
def painted(tmp_path):
    return paint_coco(tmp_path)


def to_rgb(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) uint8 pixels (what the pipelines hand out) -> (H, W, 3) float RGB 0-255."""
    assert image.dtype == torch.uint8
    return image.permute(1, 2, 0).numpy().astype(np.float64)


def _close(rgb: np.ndarray, colour, tol: float = 3.0) -> np.ndarray:
    return np.abs(rgb - np.asarray(colour, np.float64)).max(-1) <= tol


def check_aligned(sample, colours, exact: bool, need: float = 0.8, margin: int = 1) -> int:
    """Every target of ``sample`` agrees with its painted pixels; returns the number of instances.

    ``exact``: pixel for pixel; else a share ``need`` of each mask (resampled edges blend colours) and
    all of its interior (the mask less ``margin`` pixels around its edge), and 90% of the pixels of
    each colour agree with the semantic mask."""
    rgb = to_rgb(sample["image"])
    h, w = rgb.shape[:2]
    sem = sample["semantic"].numpy()
    masks = sample["masks"].numpy()
    assert masks.dtype == bool and masks.shape[1:] == (h, w)
    by_colour = {c: cat for c, cat in colours.values()}
    need, sem_need = (0.999, 0.999) if exact else (need, 0.9)
    for box, label, m in zip(sample["boxes"].numpy(), sample["box_labels"].tolist(), masks):
        ys, xs = np.nonzero(m)
        assert len(ys), "an empty instance mask"
        np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])  # the mask's tight box
        assert (box >= 0).all() and box[2] <= w and box[3] <= h  # nothing outside the canvas
        # the mask's pixels carry one instance's colour, and that instance's category is the label; the colour is
        # read from the interior where there is one (a sliver left at a border is all resampled, blended edge)
        inner = cv2.erode(m.astype(np.uint8), np.ones((2 * margin + 1,) * 2, np.uint8), borderValue=0).astype(bool)
        colour = min(by_colour, key=lambda c: np.abs(np.median(rgb[inner if inner.any() else m], 0) - c).max())
        assert _close(rgb[m], colour).mean() >= need
        if inner.any():
            assert _close(rgb[inner], colour).mean() >= 0.98
            assert by_colour[colour] == label
        elif exact:
            assert by_colour[colour] == label
        assert (sem[m] == label + 1).mean() >= sem_need  # the semantic mask agrees with the instance mask
    # the semantic mask agrees with the pixels: each object colour is its category, background 0,
    # the grey of empty canvas and letterbox IGNORE_INDEX
    for colour, cat in by_colour.items():
        px = _close(rgb, colour, 1.0)
        if px.any():
            assert (sem[px] == cat + 1).mean() >= sem_need
    for colour, value in ((BACKGROUND, 0), ((FILL,) * 3, IGNORE_INDEX)):
        px = _close(rgb, colour, 1.0)
        if px.any():
            assert (sem[px] == value).mean() >= sem_need
    assert (sem[sem != IGNORE_INDEX] <= 2).all()
    return len(masks)


def _dataset(painted, mosaic=1.0, train=False, **kw):
    img_dir, ann, _ = painted
    transform = kw.pop("transform", None) or build_dense_transform(64, train=train, **{**AUG, "color_jitter": 0.0})
    return CocoDataset(img_dir, ann, transform, mosaic=mosaic, **kw)


def test_mosaic_keeps_image_masks_semantic_and_boxes_aligned(painted):
    ds = _dataset(painted)
    counts, ignored = [], 0
    for epoch in range(4):
        ds.clock.set(epoch=epoch)
        for i in range(len(ds)):
            s = ds[i]
            assert "mosaic" in s["meta"] and len(s["meta"]["mosaic"]) == 4
            assert s["image"].shape == (3, 64, 64) and "label" not in s
            counts.append(check_aligned(s, painted[2], exact=False))
            ignored += int((s["semantic"] == IGNORE_INDEX).any())
    assert max(counts) > 3  # instances from several images in one sample
    assert ignored  # the letterboxed (non-square) images leave empty canvas: ignored in the semantic target


def test_mosaic_of_unresized_images_is_exact(tmp_path):
    painted = paint_coco(tmp_path, sizes=[(64, 64)] * 4 + [(40, 64), (64, 32)])  # longest side 64: no resizing
    ds = _dataset(painted)
    for i in range(len(ds)):
        check_aligned(ds[i], painted[2], exact=True)


def test_mosaic_under_train_augmentation_stays_aligned(painted):
    ds = _dataset(painted, transform=build_dense_transform(64, train=True, hflip=0.5, scale=(0.8, 1.2),
                                                           translate=0.1, affine_p=1.0, color_jitter=0.0))
    for epoch in range(3):
        ds.clock.set(epoch=epoch)
        for i in range(len(ds)):
            check_aligned(ds[i], painted[2], exact=False, need=0.0, margin=2)  # resize then affine: slivers all edge


def test_mosaic4_places_all_targets_by_the_same_slices():
    rng = np.random.default_rng(0)
    items = []
    for k in range(4):  # longest side 64: not resized, so no edge is blended
        image = np.full((24, 64, 3), 10 * k, np.uint8)
        masks = np.zeros((1, 24, 64), bool)
        masks[0, 4:20, 6:40] = True
        image[masks[0]] = (50 + 40 * k, 0, 0)
        sem = masks[0].astype(np.uint8) * (k + 1)
        items.append(MosaicItem(image, masks, np.array([k]), sem))
    for _ in range(20):
        out = mosaic4(items, 64, rng)
        assert out.image.shape == (64, 64, 3) and out.masks.shape[1:] == (64, 64)
        assert len(out.masks) == len(out.labels) == len(out.sources)
        np.testing.assert_array_equal(out.labels, out.sources)  # label k came from item k
        for m, k in zip(out.masks, out.sources):
            assert (out.image[m][:, 0] == 50 + 40 * k).all() and (out.semantic[m] == k + 1).all()
            assert out.valid[m].all()
        assert (out.image[out.valid == 0] == FILL).all()
        assert out.valid.any() and not out.valid.all()  # 24 px high images cannot fill the 64 x 64 view


def test_close_mosaic_switches_it_off_for_the_last_epochs(painted):
    ds = _dataset(painted, close_mosaic=2)
    plain = _dataset(painted, mosaic=0.0)
    ds.clock.set(epoch=7, max_epochs=10)
    assert ds.mosaic_active() and all("mosaic" in ds[i]["meta"] for i in range(len(ds)))
    for epoch in (8, 9):
        ds.clock.set(epoch=epoch, max_epochs=10)
        assert not ds.mosaic_active()
        for i in range(len(ds)):
            a, b = ds[i], plain[i]
            assert "mosaic" not in a["meta"]
            for key in ("image", "boxes", "box_labels", "masks", "semantic"):
                assert torch.equal(a[key], b[key])
    ds.clock.set(epoch=9, max_epochs=None)  # without a known max_epochs, close_mosaic cannot count back
    assert ds.mosaic_active()


def test_p0_equals_the_plain_pipeline_under_augmentation(painted):
    img_dir, ann, _ = painted
    out = []
    for kwargs in ({}, {"mosaic": 0.0, "close_mosaic": 3}):
        torch.manual_seed(5)  # the pipelines' seed (pipeline_seed)
        ds = CocoDataset(img_dir, ann, build_dense_transform(64, train=True, **AUG), **kwargs)
        out.append([ds[i % len(ds)] for i in range(12)])
    for a, b in zip(*out):
        for key in ("image", "boxes", "box_labels", "masks", "semantic"):
            assert torch.equal(a[key], b[key])


def test_mosaic_is_a_function_of_seed_epoch_and_index(painted):
    """Repeatable and resumable: the same (seed, epoch, index) gives the same mosaic, whatever came before."""
    a, b = _dataset(painted, mosaic=0.5), _dataset(painted, mosaic=0.5)
    a.clock.set(epoch=3, seed=11)
    b.clock.set(epoch=3, seed=11)
    forward = [a[i] for i in range(len(a))]
    backward = [b[i] for i in reversed(range(len(b)))][::-1]
    for x, y in zip(forward, backward):
        assert x["meta"].get("mosaic") == y["meta"].get("mosaic")
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["boxes"], y["boxes"])
    picks = []
    for epoch in range(6):
        a.clock.set(epoch=epoch, seed=11)
        picks.append(tuple(str(a[i]["meta"].get("mosaic")) for i in range(len(a))))
    assert len(set(picks)) == len(picks)  # a new draw every epoch
    n_mosaic = sum(p != "None" for row in picks for p in row)
    assert 0.2 < n_mosaic / (6 * len(a)) < 0.8  # p = 0.5
    a.clock.set(epoch=0, seed=12)
    assert tuple(str(a[i]["meta"].get("mosaic")) for i in range(len(a))) != picks[0]


def test_bad_mosaic_settings_are_refused(painted):
    with pytest.raises(DatasetError, match="probability"):
        _dataset(painted, mosaic=1.5)
    with pytest.raises(DatasetError, match="close_mosaic"):
        _dataset(painted, close_mosaic=-1)


def _fake_trainer(max_epochs):
    progress = types.SimpleNamespace(current=types.SimpleNamespace(processed=0))
    loop = types.SimpleNamespace(epoch_loop=types.SimpleNamespace(batch_progress=progress))
    return types.SimpleNamespace(current_epoch=0, max_epochs=max_epochs, distributed_sampler_kwargs=None,
                                 fit_loop=loop)


@pytest.mark.parametrize("mixed", [False, True])
def test_the_epoch_reaches_persistent_workers(painted, mixed, monkeypatch):
    """close_mosaic through the data module: the clock set in the main process reaches the workers' copies."""
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    img_dir, ann, _ = painted

    def factory():
        return CocoDataset(img_dir, ann, build_dense_transform(64, train=True, **AUG), mosaic=1.0, close_mosaic=1)

    train = {"a": factory, "b": factory} if mixed else factory
    dm = MultiTaskDataModule(train=train, val=None, batch_size=2, num_workers=2, seed=3,
                             batches_per_epoch=3 if mixed else None)
    dm.trainer = _fake_trainer(max_epochs=3)
    dm.setup("fit")
    assert all(ds.clock is dm.clock for ds in dm.train_sets.values())
    loader = dm.train_dataloader()
    assert loader.persistent_workers
    seen = []
    for epoch in range(3):
        dm.trainer.current_epoch = epoch
        seen.append({"mosaic" in m for batch in loader for m in batch["meta"]})
        assert dm.clock.epoch == epoch and dm.clock.seed == 3
    assert seen == [{True}, {True}, {False}]  # mosaic off in the last (close_mosaic=1) epoch


class _Recorder(L.LightningModule):
    """Records, per epoch, whether each training sample was a mosaic and the batch sides."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[int, list] = {}

    def training_step(self, batch, batch_idx):
        self.seen.setdefault(self.current_epoch, []).extend(
            ("mosaic" in m, batch["image"].shape[-1]) for m in batch["meta"])
        return (self.w - batch["image"].float().mean()) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_close_mosaic_and_multiscale_in_a_lightning_run(painted, tmp_path, monkeypatch):
    """Under a Trainer with persistent workers: mosaic in all but the last close_mosaic epochs, sizes drawn."""
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    img_dir, ann, _ = painted

    def factory():
        return CocoDataset(img_dir, ann, build_dense_transform(64, train=True, **AUG), mosaic=1.0, close_mosaic=2,
                           mask_stride=2)

    dm = MultiTaskDataModule(train=factory, val=None, batch_size=2, num_workers=2, multiscale=[0.5, 1.5])
    module = _Recorder()
    trainer = L.Trainer(max_epochs=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", limit_val_batches=0,
                        default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=dm)
    assert sorted(module.seen) == [0, 1, 2, 3]
    assert [{m for m, _ in module.seen[e]} for e in range(4)] == [{True}, {True}, {False}, {False}]
    sides = {s for e in module.seen for _, s in module.seen[e]}
    assert sides <= {32, 64, 96} and len(sides) > 1


def test_mosaic_buffer_draws_partners_from_recent_images_without_decoding(painted, monkeypatch):
    import fourm21.data.coco as coco_module

    reads = []
    real = coco_module.read_image_or_skip
    monkeypatch.setattr(coco_module, "read_image_or_skip",
                        lambda path, *a, **k: reads.append(path) or real(path, *a, **k))
    ds = _dataset(painted, mosaic_buffer=4)
    ds.clock.set(epoch=0)
    for i in range(len(ds)):
        before, held = len(reads), set(ds._recent)
        s = ds[i]
        check_aligned(s, painted[2], exact=False)
        if i > 0:  # the first mosaic decodes its partners; from then on only a primary not held is read, and
            assert len(reads) == before + (ds.ids[i] not in held)  # the partners are among the four images
            assert set(s["meta"]["mosaic"][1:]) <= held | {ds.ids[i]}  # held before it (or itself)
        assert len(ds._recent) <= 4
    held = set(ds._recent)
    before = len(reads)
    again = ds[ds.ids.index(next(iter(held)))]  # a held primary is served from the buffer, not decoded again
    check_aligned(again, painted[2], exact=False)
    assert len(reads) == before
    with pytest.raises(DatasetError, match="mosaic_buffer"):
        _dataset(painted, mosaic_buffer=-1)


def test_a_seeded_mosaic_sample_does_not_depend_on_what_was_drawn_before(painted):
    from fourm21.data.transforms import seed_pipeline

    def draw(ds, index, key):
        seed_pipeline(ds.transform, key)
        return ds[index]

    first = draw(_dataset(painted, train=True), 1, (3, 0, 1))  # its first mosaic: the mosaic pipeline is built
    ds = _dataset(painted, train=True)
    draw(ds, 2, (3, 0, 2))
    again = draw(ds, 1, (3, 0, 1))
    assert first["meta"]["mosaic"] == again["meta"]["mosaic"]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["masks"], again["masks"])
