"""ImageFolder trees for the classification head: classes from the folders, any image size, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from fourm21.data.image_folder import ImageFolderDataset
from fourm21.data.transforms import build_classification_transform
from fourm21.errors import BadImageError, DatasetError
from tests.conftest import TINY, run_cli_here


def tree(root: Path, classes=("cat", "dog", "eel"), per_class: int = 3, val: bool = True) -> Path:
    """root/{train,val}/<class>/ with images of different sizes and formats (one in a sub-folder)."""
    rng = np.random.default_rng(0)
    for split in ("train", "val") if val else ("train",):
        for c in classes:
            for i in range(per_class):
                w, h = int(rng.integers(20, 90)), int(rng.integers(20, 90))
                sub = "more/" if i == 2 else ""
                path = root / split / c / f"{sub}{i}.{'png' if i % 2 else 'jpg'}"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return root


def test_classes_from_folders_any_size(tmp_path):
    root = tree(tmp_path)
    ds = ImageFolderDataset(root, "train", transform=build_classification_transform(32, train=True))
    assert ds.image_class_names == ["cat", "dog", "eel"] and len(ds) == 9
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    s = ds[2]
    assert s["image"].shape == (3, 32, 32) and s["label"] == 0 and set(s) == {"image", "label", "meta"}
    assert s["meta"]["file_name"] == "cat/more/2.jpg" and s["meta"]["source"] == "image_folder"
    raw = ImageFolderDataset(root, "val")[0]  # no transform: the image as it is, uint8
    assert raw["image"].shape[1:] == raw["meta"]["orig_size"] and raw["image"].dtype == torch.uint8


def test_val_shares_trains_index_and_classes_can_be_chosen(tmp_path):
    root = tree(tmp_path)
    for f in (root / "val" / "cat").rglob("*.*"):
        f.unlink()
    val = ImageFolderDataset(root, "val")  # a class without val images keeps its index
    assert val.image_class_names == ["cat", "dog", "eel"] and set(val.labels.tolist()) == {1, 2}
    two = ImageFolderDataset(root, "train", classes=["eel", "cat"], limit=4)
    assert two.image_class_names == ["eel", "cat"] and len(two) == 4
    with pytest.raises(DatasetError, match="no class"):
        ImageFolderDataset(root, "train", classes=["yak"])


def test_bad_trees_name_the_folder(tmp_path):
    root = tree(tmp_path)
    (root / "val" / "fox").mkdir()
    with pytest.raises(DatasetError, match=r"val: class folder\(s\) \['fox'\] are not in"):
        ImageFolderDataset(root, "val")
    (root / "train" / "fox").mkdir()
    with pytest.raises(DatasetError, match=r"train/fox: no images"):
        ImageFolderDataset(root, "train")
    with pytest.raises(DatasetError, match=r"no folder .*nowhere/train"):
        ImageFolderDataset(tmp_path / "nowhere", "train")


def test_a_bad_image_stops_or_is_skipped(tmp_path):
    root = tree(tmp_path)
    (root / "train" / "dog" / "0.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(BadImageError, match="0.jpg"):
        ImageFolderDataset(root, "train")[3]
    ds = ImageFolderDataset(root, "train", on_bad_image="skip")
    assert ds[3] is None and str(root / "train" / "dog" / "0.jpg") in ds.skip_log.entries()


def _train(args: list[str], cwd: Path, here: bool = False) -> subprocess.CompletedProcess:
    if here:  # in this process: runs that stop at an error
        return run_cli_here("fourm21-train", [*args, f"hydra.run.dir={cwd / 'run'}"], cwd)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "fourm21.engine.train", *args,
                           f"hydra.run.dir={cwd / 'run'}"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_train_experiment_image_folder_fast_dev_run(tmp_path):
    root = tree(tmp_path / "tree", classes=("a", "b", "c", "d", "e"), per_class=2)
    tiny = [a for a in TINY if not a.startswith("data.")]  # the shapes generator's keys
    res = _train(["experiment=image_folder", f"data.root={root}", "data.img_size=32", "data.datamodule.batch_size=4",
                  "data.datamodule.num_workers=0", "trainer.fast_dev_run=true", *tiny], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    cfg = OmegaConf.load(tmp_path / "run" / "config.yaml")
    assert cfg.data.num_image_classes == 5 and cfg.model.heads.cls.num_classes == 5
    assert (tmp_path / "run" / "report.json").is_file()


def test_bad_trees_and_configs_are_one_line(tmp_path):
    res = _train(["experiment=image_folder", f"data.root={tmp_path / 'nowhere'}"], tmp_path, here=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "data.root" in res.stderr and "nowhere" in res.stderr
    # the data config alone: the dense heads it cannot feed are switched off, and the missing val/ is the error
    root = tree(tmp_path / 'tree', per_class=1, val=False)
    res = _train(["data=image_folder", f"data.root={root}"], tmp_path, here=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr and "head 'det' switched off" in res.stdout
    assert res.stderr.strip().count("\n") == 0 and "data.root: no folder" in res.stderr and "val" in res.stderr
