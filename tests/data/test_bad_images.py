"""Bad image files, made on the spot: each is either repaired to 8-bit RGB or a BadImageError naming the file;
under ``on_bad_image=skip`` the data sets leave it out and count it, also from DataLoader workers."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from fourm21.data.cifar10 import Cifar10Dataset
from fourm21.data.coco import CocoDataset
from fourm21.data.collate import collate_samples
from fourm21.data.csv_labels import AttributeDataset, MultiLabelCaptionDataset
from fourm21.data.images import SkipLog, read_image, skipped_images
from fourm21.data.transforms import apply_dense_transform, build_classification_transform, build_dense_transform
from fourm21.errors import BadImageError, ConfigError, DatasetError
from fourm21.training.evaluation import data_report


def _rgb(h: int = 24, w: int = 36) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _cut(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# --- files that cannot be used: name, maker, words the message must contain ---------------------------------

def _zero(p):
    p.write_bytes(b"")


def _truncated_jpeg(p):
    Image.fromarray(_rgb(64, 64)).save(p, quality=95)
    _cut(p, 0.5)


def _truncated_png(p):
    Image.fromarray(_rgb(64, 64)).save(p)
    _cut(p, 0.6)


def _header_only_png(p):
    Image.fromarray(_rgb(64, 64)).save(p)
    _cut(p, 0.05)


def _text(p):
    p.write_text("this is not an image\n")


def _random_bytes(p):
    p.write_bytes(np.random.default_rng(1).integers(0, 255, 500, dtype=np.uint8).tobytes())


def _directory(p):
    p.mkdir()


def _bomb(p):
    """A 30000 x 30000 PNG header (a decompression bomb): refused before any pixel is decoded."""
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 10))
                  + _png_chunk(b"IEND", b""))


BAD_FILES = [
    ("zero.jpg", _zero, "empty file"),
    ("cut.jpg", _truncated_jpeg, "truncated"),
    ("cut.png", _truncated_png, "truncated"),
    ("header_only.png", _header_only_png, "cannot decode image"),
    ("notes.jpg", _text, "not an image"),
    ("noise.png", _random_bytes, "not an image"),
    ("folder.jpg", _directory, "not a file"),
    ("bomb.png", _bomb, "too large"),
]


@pytest.mark.parametrize("name, make, words", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_unusable_image_is_an_error_naming_the_file(tmp_path, name, make, words):
    path = tmp_path / name
    make(path)
    with pytest.raises(BadImageError, match=words) as e:
        read_image(path)
    assert str(path) in str(e.value) and e.value.path == str(path)
    assert isinstance(e.value, DatasetError)


def test_missing_image_names_the_file(tmp_path):
    with pytest.raises(BadImageError, match="image not found") as e:
        read_image(tmp_path / "gone.jpg")
    assert "gone.jpg" in str(e.value)


# --- files that are repaired: maker, check of the (H, W, 3) uint8 result --------------------------------------

def _save(mode_image: Image.Image, name: str, **kw):
    def make(p: Path) -> Path:
        p = p.with_name(name)
        mode_image.save(p, **kw)
        return p
    return make


def _rgba(p):
    a = np.zeros((10, 12, 4), np.uint8)
    a[..., 0] = 255
    a[:5, :, 3] = 255  # top half opaque red, bottom half transparent
    p = p.with_name("rgba.png")
    Image.fromarray(a, "RGBA").save(p)
    return p


def _sixteen_bit_gray(p):
    p = p.with_name("gray16.png")
    Image.fromarray(np.full((10, 12), 65535, np.uint16)).save(p)
    return p


def _sixteen_bit_rgb(p):
    p = p.with_name("rgb48.png")
    a = np.zeros((10, 12, 3), np.uint16)
    a[..., 2] = 65535  # cv2 writes BGR: full red
    cv2.imwrite(str(p), a)
    return p


def _float_tiff(p):
    p = p.with_name("float.tif")
    Image.fromarray(np.full((10, 12), 0.5, np.float32), "F").save(p)
    return p


def _exif_rotated(p):
    p = p.with_name("rotated.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(_rgb(10, 30)).save(p, exif=exif)
    return p


def _palette_transparent(p):
    p = p.with_name("palette_t.png")
    im = Image.new("P", (12, 10), 0)
    im.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    im.info["transparency"] = 0
    im.save(p, transparency=0)
    return p


def _gif(p):
    p = p.with_name("anim.gif")
    frames = [Image.new("RGB", (12, 10), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(p, save_all=True, append_images=frames[1:])
    return p


REPAIRED = [
    ("rgba", _rgba, lambda a: a[0, 0].tolist() == [255, 0, 0] and a[-1, 0].tolist() == [114, 114, 114]),
    ("la", _save(Image.new("LA", (12, 10), (200, 255)), "la.png"), lambda a: a[0, 0].tolist() == [200] * 3),
    ("grayscale", _save(Image.new("L", (12, 10), 77), "gray.png"), lambda a: a[0, 0].tolist() == [77] * 3),
    ("one_bit", _save(Image.new("1", (12, 10), 1), "bits.png"), lambda a: a[0, 0].tolist() == [255] * 3),
    ("palette", _save(Image.new("P", (12, 10), 0), "palette.png"), lambda a: a.shape == (10, 12, 3)),
    ("palette_transparency", _palette_transparent, lambda a: a[0, 0].tolist() == [114, 114, 114]),
    ("16bit_gray", _sixteen_bit_gray, lambda a: a[0, 0].tolist() == [255] * 3),
    ("16bit_rgb", _sixteen_bit_rgb, lambda a: a[0, 0, 0] > 250 and a[0, 0, 1:].max() < 5),
    ("float_tiff", _float_tiff, lambda a: a[0, 0].tolist() == [127] * 3),
    ("cmyk_jpeg", _save(Image.new("CMYK", (12, 10), (0, 0, 0, 0)), "cmyk.jpg"), lambda a: a[0, 0].min() > 240),
    ("exif_rotated", _exif_rotated, lambda a: a.shape == (30, 10, 3)),
    ("animated_gif", _gif, lambda a: a[0, 0].tolist() == [255, 0, 0]),
    ("one_pixel", _save(Image.new("RGB", (1, 1), (9, 9, 9)), "dot.png"), lambda a: a.shape == (1, 1, 3)),
]


@pytest.mark.parametrize("name, make, check", REPAIRED, ids=[r[0] for r in REPAIRED])
def test_unusual_image_is_read_as_8bit_rgb(tmp_path, name, make, check):
    a = read_image(make(tmp_path / "x"))
    assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
    assert check(a), a[0, 0]


@pytest.mark.parametrize("hw", [(1, 1), (3, 2), (1, 300), (300, 1)], ids=["1x1", "3x2", "1x300", "300x1"])
def test_images_smaller_than_the_stride_are_letterboxed(hw):
    image = np.full((*hw, 3), 50, np.uint8)
    out = apply_dense_transform(build_dense_transform(64, train=True), image, np.zeros((0, 4), np.float32),
                                np.zeros((0, *hw), bool), np.zeros(hw, np.uint8))
    assert out["image"].shape == (64, 64, 3)
    assert build_classification_transform(32, train=True)(image=image)["image"].shape == (32, 32, 3)


# --- the policy in the data sets ---------------------------------------------------------------------------

@pytest.fixture()
def coco_with_bad_images(tmp_path):
    """Four images: good, 0-byte, truncated, missing; one box each."""
    img = tmp_path / "img"
    img.mkdir()
    Image.fromarray(_rgb(32, 32)).save(img / "good.png")
    _zero(img / "zero.png")
    _truncated_png(img / "cut.png")
    names = ["good.png", "zero.png", "cut.png", "missing.png"]
    data = {"images": [{"id": i + 1, "file_name": n, "height": 32 if i != 2 else 64, "width": 32 if i != 2 else 64}
                       for i, n in enumerate(names)],
            "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [2, 2, 10, 10], "area": 100,
                             "iscrowd": 0, "segmentation": []} for i in range(4)],
            "categories": [{"id": 1, "name": "thing"}]}
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    return img, ann


def test_skip_policy_leaves_bad_images_out_and_counts_them(coco_with_bad_images, caplog):
    img, ann = coco_with_bad_images
    ds = CocoDataset(img, ann, build_dense_transform(32, train=False), on_bad_image="skip")
    with caplog.at_level("WARNING"):
        samples = [ds[i] for i in range(len(ds))]
    assert samples[0] is not None and samples[1:] == [None, None, None]
    assert set(ds.skip_log.entries()) == {str(img / n) for n in ("zero.png", "cut.png", "missing.png")}
    assert "skipped image" in caplog.text and "zero.png" in caplog.text
    batch = collate_samples(samples)
    assert batch["image"].shape[0] == 1 and [m["file_name"] for m in batch["meta"]] == ["good.png"]
    assert collate_samples(samples[1:]) is None  # a batch of skipped images only: the steps skip it
    ds[1]  # seen again (next epoch): still counted once
    assert len(ds.skip_log) == 3


def test_error_policy_names_the_file(coco_with_bad_images):
    img, ann = coco_with_bad_images
    ds = CocoDataset(img, ann, build_dense_transform(32, train=False), on_bad_image="error")
    assert ds[0] is not None
    with pytest.raises(BadImageError, match="zero.png: empty file"):
        ds[1]
    with pytest.raises(ConfigError, match="data.on_bad_image: must be one of"):
        CocoDataset(img, ann, on_bad_image="ignore")


def test_skips_in_dataloader_workers_reach_the_report(coco_with_bad_images, tmp_path):
    img, ann = coco_with_bad_images
    ds = CocoDataset(img, ann, build_dense_transform(32, train=False), on_bad_image="skip")
    batches = list(DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_samples))
    assert batches[1] is None and batches[0]["image"].shape[0] == 1  # [good, zero] and [cut, missing]
    assert len(ds.skip_log) == 3  # recorded in the workers, read in the main process

    class DM:
        train_sets = {"main": ds}
        val_sets = {"main": ds}
    report = data_report(DM(), tmp_path)
    assert report["data/skipped_images"] == 3
    listed = (tmp_path / "skipped_images.tsv").read_text().splitlines()
    assert listed[0] == "file\treason" and len(listed) == 4 and any("truncated" in ln for ln in listed)


def test_a_worker_error_is_one_line_naming_the_file(coco_with_bad_images):
    from torch._utils import ExceptionWrapper  # what a DataLoader worker sends back (a real one costs 5 s to stop)

    from fourm21.errors import find_user_error, one_line
    img, ann = coco_with_bad_images
    ds = CocoDataset(img, ann, build_dense_transform(32, train=False), on_bad_image="error")
    try:
        ds[1]
    except BadImageError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(BadImageError) as e:
        wrapped.reraise()
    assert "Traceback" in str(e.value)  # PyTorch puts the worker's traceback into the message ...
    line = one_line(find_user_error(e.value))
    assert "\n" not in line and line == f"BadImageError: {img / 'zero.png'}: empty file (0 bytes)"  # ... not we


def test_image_size_differs_from_the_annotation_file(coco_with_bad_images):
    img, ann = coco_with_bad_images
    Image.fromarray(_rgb(32, 32)).save(img / "cut.png")  # the JSON says 64 x 64
    with pytest.raises(BadImageError, match=r"cut.png: the image is 32x32 but .*ann.json says 64x64"):
        CocoDataset(img, ann, build_dense_transform(32, train=False))[2]
    ds = CocoDataset(img, ann, build_dense_transform(32, train=False), on_bad_image="skip")
    assert ds[2] is None and "differs" in ds.skip_log.entries()[str(img / "cut.png")]


def test_bad_semantic_mask_follows_the_policy(tmp_path):
    img = tmp_path / "img"
    sem = tmp_path / "sem"
    img.mkdir()
    sem.mkdir()
    for n in ("a.png", "b.png"):
        Image.fromarray(_rgb(32, 32)).save(img / n)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(sem / "a.png")  # wrong size; b.png has none
    data = {"images": [{"id": 1, "file_name": "a.png", "height": 32, "width": 32},
                       {"id": 2, "file_name": "b.png", "height": 32, "width": 32}],
            "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    (tmp_path / "ann.json").write_text(json.dumps(data))
    ds = CocoDataset(img, tmp_path / "ann.json", build_dense_transform(32, train=False), semantic_dir=sem,
                     on_bad_image="skip")
    assert ds[0] is None and ds[1] is None
    assert set(ds.skip_log.entries()) == {str(sem / "a.png"), str(sem / "b.png")}


def test_cifar_folder_skips_bad_images_and_the_cache_remembers(tmp_path):
    for k, name in enumerate(("cat", "dog")):
        (tmp_path / "train" / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((32, 32, 3), 10 * k, np.uint8)).save(tmp_path / "train" / name / f"{i}.png")
    _zero(tmp_path / "train" / "dog" / "2.png")
    Image.new("RGBA", (40, 40), (1, 2, 3, 255)).save(tmp_path / "train" / "dog" / "3.png")  # RGBA, 40 px: repaired
    with pytest.raises(BadImageError, match="2.png: empty file"):
        Cifar10Dataset(tmp_path, "train")
    ds = Cifar10Dataset(tmp_path, "train", on_bad_image="skip")
    assert len(ds) == 5 and ds.labels.tolist() == [0, 0, 1, 1, 1] and ds.images[4, 0, 0].tolist() == [1, 2, 3]
    assert list(ds.skip_log.entries()) == [str(tmp_path / "train" / "dog" / "2.png")]
    again = Cifar10Dataset(tmp_path, "train", on_bad_image="skip")  # from the cache
    assert len(again) == 5 and len(again.skip_log) == 1
    (tmp_path / ".fourm21_cache_train.npz").write_bytes(b"garbage")  # a broken cache is rebuilt
    assert len(Cifar10Dataset(tmp_path, "train", on_bad_image="skip")) == 5


def test_csv_data_sets_follow_the_policy(tmp_path):
    Image.fromarray(_rgb()).save(tmp_path / "a.jpg")
    _truncated_jpeg(tmp_path / "b.jpg")
    (tmp_path / "attr.csv").write_text("image,colour\na.jpg,red\nb.jpg,blue\nc.jpg,red\n")
    (tmp_path / "ml.csv").write_text("ImageID,Labels,Caption\na.jpg,1,x\nb.jpg,1,y\nc.jpg,,z\n")
    t = build_classification_transform(32, train=False)
    attr = AttributeDataset(tmp_path / "attr.csv", tmp_path, ["colour"], transform=t, on_bad_image="skip")
    ml = MultiLabelCaptionDataset(tmp_path / "ml.csv", tmp_path, [1], transform=t, on_bad_image="skip")
    for ds in (attr, ml):
        assert ds[0] is not None and ds[1] is None and ds[2] is None
    assert set(skipped_images([attr, ml, object()])) == {str(tmp_path / "b.jpg"), str(tmp_path / "c.jpg")}
    with pytest.raises(BadImageError, match="c.jpg: image not found"):
        AttributeDataset(tmp_path / "attr.csv", tmp_path, ["colour"], transform=t)[2]


def test_skip_log_survives_pickling(tmp_path):
    import pickle
    log = SkipLog("x")
    copy = pickle.loads(pickle.dumps(log))  # what a spawned worker gets
    copy.add(tmp_path / "a.jpg", "bad\tbytes\n")
    assert log.entries() == {str(tmp_path / "a.jpg"): "bad bytes"}
