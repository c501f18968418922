import pickle

import numpy as np
import pytest
from PIL import Image

from fourm21.data.cifar10 import CIFAR10_CLASSES, Cifar10Dataset
from fourm21.data.transforms import build_classification_transform
from fourm21.errors import DatasetError


def make_cifar_tree(root, per_class=2, classes=CIFAR10_CLASSES):
    """A CIFAR-10 image-folder tree with per-class solid colours, so labels can be checked from pixels."""
    for split in ("train", "test"):
        for k, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(np.full((32, 32, 3), 20 * k + i, np.uint8)).save(root / split / name / f"{i:04d}.png")
    return root


def test_folder_layout_in_official_order_with_cache(tmp_path):
    root = make_cifar_tree(tmp_path)
    ds = Cifar10Dataset(root, "train", build_classification_transform(32, train=False))
    assert len(ds) == 20 and ds.image_class_names == list(CIFAR10_CLASSES)
    s = ds[5]
    assert s["image"].shape == (3, 32, 32) and s["label"] == 2 and set(s) == {"image", "label", "meta"}
    assert ds.images[5, 0, 0, 0] == 20 * 2 + 1
    assert (root / ".fourm21_cache_train.npz").is_file()
    again = Cifar10Dataset(root, "train")  # from the cache
    np.testing.assert_array_equal(again.images, ds.images)
    assert Cifar10Dataset(root, "test", limit=7).labels.shape == (7,)


def test_pickle_layout(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10
    from torchvision.datasets import cifar as cifar_module
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 255, (3, 3072), dtype=np.uint8)
        with open(base / name, "wb") as f:
            pickle.dump({"data": data, "labels": [1, 2, 3]}, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CIFAR10_CLASSES)}, f)
    # torchvision checks the official archive's md5 sums; these files are made here
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar_module, "check_integrity", lambda *a, **k: True)
    ds = Cifar10Dataset(tmp_path, "train", build_classification_transform(32, train=True))
    assert len(ds) == 15 and ds[0]["label"] == 1 and ds[0]["image"].shape == (3, 32, 32)
    assert len(Cifar10Dataset(tmp_path, "test")) == 3


def test_missing_data_says_where_and_how(tmp_path):
    with pytest.raises(DatasetError, match="no CIFAR-10 at .*download=true"):
        Cifar10Dataset(tmp_path / "nothing", "train")
    with pytest.raises(DatasetError, match="split"):
        Cifar10Dataset(tmp_path, "validation")


def test_holdout_sets_train_images_aside_for_validation(tmp_path):
    """val comes from train, never from test: checkpoints are chosen without the split that is reported."""
    root = make_cifar_tree(tmp_path, per_class=3)
    rest = Cifar10Dataset(root, "train", holdout=8, take="rest")
    held = Cifar10Dataset(root, "train", holdout=8, take="holdout")
    assert len(rest) == 22 and len(held) == 8
    pixels = {tuple(im.reshape(-1, 3)[0]) for im in rest.images}
    assert not pixels & {tuple(im.reshape(-1, 3)[0]) for im in held.images}  # disjoint (every image is unique)
    again = Cifar10Dataset(root, "train", holdout=8, take="holdout")
    np.testing.assert_array_equal(again.images, held.images)  # the same draw every run
    with pytest.raises(DatasetError, match="holdout"):
        Cifar10Dataset(root, "train", holdout=30)
    with pytest.raises(DatasetError, match="take"):
        Cifar10Dataset(root, "train", holdout=8, take="val")
