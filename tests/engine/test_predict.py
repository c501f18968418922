import json

import numpy as np
from PIL import Image
from pycocotools.coco import COCO

from tests.conftest import run_cli_here


def test_predict_on_a_folder_writes_overlays_and_coco_json(tiny_run, tmp_path):
    work, run_dir, _ = tiny_run
    src = tmp_path / "photos"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rgb = Image.fromarray((rng.random((50, 70, 3)) * 255).astype(np.uint8))
    rgb.save(src / "colour.jpg")
    rgb.convert("L").save(src / "grey.png")
    rgb.convert("RGBA").save(src / "sub" / "alpha.png")
    (src / "notes.txt").write_text("not an image")  # ignored: not an image suffix
    (src / "broken.jpg").write_bytes(b"")  # unreadable: skipped and listed (on_bad_image=skip)
    out = tmp_path / "pred"
    res = run_cli_here("fourm21-predict", [f"ckpt_path={run_dir / 'checkpoints/best.ckpt'}", f"source={src}",
                                      "score_thr=0.0", "max_det=5", f"hydra.run.dir={out}"], work)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "3 images" in res.stdout and "1 unreadable images skipped" in res.stdout
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["000001_colour.png", "000002_grey.png",
                                                                      "000003_alpha.png"]
    data = json.loads((out / "predictions.json").read_text())
    assert all(im["classification"]["class_name"] in ("forest", "desert", "ocean", "dusk") for im in data["images"])
    assert all(len(im["classification"]["top5"]) == 4 for im in data["images"])
    assert [s["file_name"] for s in data.pop("skipped_images")] == [str(src / "broken.jpg")]
    coco = COCO()
    coco.dataset = data
    coco.createIndex()  # a valid COCO file: pycocotools indexes it and decodes the masks
    per_image = [len(coco.getAnnIds(imgIds=i)) for i in coco.getImgIds()]
    assert all(n <= 5 for n in per_image) and sum(per_image) > 0
    ann = coco.loadAnns(coco.getAnnIds())[0]
    assert coco.annToMask(ann).shape == (50, 70)
    assert {c["name"] for c in data["categories"]} == {"circle", "square", "triangle"}


def test_predict_missing_source_is_one_line(tiny_run, tmp_path):
    work, run_dir, _ = tiny_run
    res = run_cli_here("fourm21-predict", [f"ckpt_path={run_dir / 'checkpoints/best.ckpt'}",
                                           f"source={tmp_path / 'none'}", f"hydra.run.dir={tmp_path / 'p'}"], work)
    assert res.returncode == 2 and "source not found" in res.stderr and "Traceback" not in res.stderr
