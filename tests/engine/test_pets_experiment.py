"""experiment=pets on a folder in its layout (COCO boxes and masks, labels.csv with breed and species, trimap-like
semantic PNGs), written here: every head trains in one run, and fourm21-eval needs only the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from PIL import Image

from tests.conftest import run_cli

BREEDS = {"Abyssinian": "cat", "Bengal": "cat", "american_bulldog": "dog"}
SAME = ["trainer.precision=32-true", "plots=false"]  # fp32 on every CPU; no plots (time)


def pets_like(root: Path, per_split: dict[str, int] = {"train": 6, "val": 3}) -> Path:  # noqa: B006
    """The oxford-pets-mini layout: one pet per 64 x 64 photo (a bright disc for cats, a dark square for dogs)."""
    rows, image_id = ["file_name,breed,species,split,width"], 0
    (root / "annotations").mkdir(parents=True)
    (root / "semantic").mkdir()
    for split, n in per_split.items():
        images, anns = [], []
        for i in range(n):
            image_id += 1
            breed = list(BREEDS)[image_id % 3]
            name = f"{breed}_{image_id}.jpg"
            dog = BREEDS[breed] == "dog"
            yy, xx = np.mgrid[:64, :64]
            x0, y0 = 8 + 3 * (i % 4), 10 + 2 * (i % 3)
            pet = (np.abs(xx - x0 - 16) < 16) & (np.abs(yy - y0 - 16) < 16) if dog else \
                (xx - x0 - 16) ** 2 + (yy - y0 - 16) ** 2 < 16 ** 2
            rgb = np.full((64, 64, 3), 120, np.uint8)
            rgb[pet] = (40, 40, 200) if dog else (230, 180, 60)
            (root / f"{split}2017").mkdir(exist_ok=True)
            Image.fromarray(rgb).save(root / f"{split}2017" / name, quality=95)
            trimap = np.where(pet, 1, 0).astype(np.uint8)
            trimap[(~pet) & np.roll(pet, 1, axis=1)] = 255  # a border band, as Oxford's "not classified"
            Image.fromarray(trimap).save(root / "semantic" / name.replace(".jpg", ".png"))
            ys, xs = np.nonzero(pet)
            x, y, w, h = int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)
            images.append({"id": image_id, "file_name": name, "width": 64, "height": 64})
            anns.append({"id": image_id, "image_id": image_id, "category_id": 2 if dog else 1, "iscrowd": 0,
                         "bbox": [x, y, w, h], "area": float(pet.sum()),
                         "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
            rows.append(f"{name},{breed},{BREEDS[breed]},{split},64")
        cats = [{"id": 1, "name": "cat", "supercategory": "pet"}, {"id": 2, "name": "dog", "supercategory": "pet"}]
        (root / "annotations" / f"instances_{split}2017.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats}))
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_pets_trains_every_head_and_eval_needs_only_the_checkpoint(tmp_path):
    root = pets_like(tmp_path / "pets")
    run = tmp_path / "run"
    res = run_cli("fourm21-train", ["experiment=pets", f"data.root={root}", "data.img_size=64",
                                    "data.datamodule.batch_size=3", "data.datamodule.num_workers=0",
                                    "trainer.max_epochs=2", *SAME, f"hydra.run.dir={run}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "switched off" not in res.stdout  # every head has its labels
    cfg = OmegaConf.load(run / "config.yaml")
    assert cfg.data.num_image_classes == 3 and cfg.model.heads.cls.num_classes == 3  # the breeds of labels.csv
    assert dict(cfg.model.heads.attr.groups) == {"species": 2}
    assert [n for n, h in cfg.model.heads.items() if h.enabled] == ["cls", "det", "inst", "sem", "attr"]
    trained = json.loads((run / "report.json").read_text())
    keys = ("val/cls/acc", "val/attr.species/acc", "val/det/map50", "val/inst/map50", "val/sem/miou")
    assert all(k in trained for k in keys), sorted(trained)
    assert len(list((run / "checkpoints").glob("*.ckpt"))) >= 1
    res = run_cli("fourm21-eval", [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", *SAME,
                                   f"hydra.run.dir={tmp_path / 'eval'}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "data 'pets' as the checkpoint was trained" in res.stdout
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    for key in keys:  # one validation, after the last epoch: best = last, the same weights on the same images
        assert report[key] == trained[key], key
