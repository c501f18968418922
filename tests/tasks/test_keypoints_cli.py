"""Keypoints through the CLIs on data the test writes: a COCO keypoints JSON (experiment=coco_pose) and a
YOLO-pose folder (data=yolo) train; fourm21-eval's keypoint AP equals pycocotools' COCOeval on the keypoints
file it wrote; fourm21-predict writes COCO keypoint results; the end-to-end ONNX and the OpenVINO exports
return the checkpoint's keypoints, and the service answers them."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import BIN, run_cli, run_cli_here
from tests.serve.conftest import started_server

NAMES = ["centre", "left_top", "right_top"]  # a flip swaps the two corners (by their names)
SIZE = 64
DATA = [f"data.img_size={SIZE}", "data.mask_stride=4", "data.datamodule.batch_size=8", "data.datamodule.num_workers=0"]
SMALL = ["+model.backbone.dims=[16,32,48,64]", "+model.backbone.depths=[1,1,1,1]", "model.neck.channels=32",
         "trainer.enable_model_summary=false", "trainer.precision=32-true", "plots=false", *DATA]


def _rect_scene(rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """A dark image with 1-2 bright rectangles (x0, y0, x1, y1) that do not overlap."""
    image = np.full((SIZE, SIZE, 3), 30, np.uint8)
    rects = []
    for k in range(int(rng.integers(1, 3))):
        w, h = (int(v) for v in rng.integers(14, 26, 2))
        x0 = int(rng.integers(0, SIZE // 2 - w // 2)) + k * SIZE // 2
        y0 = int(rng.integers(0, SIZE - h))
        x0 = min(x0, SIZE - w)
        image[y0:y0 + h, x0:x0 + w] = rng.integers(150, 256, 3)
        rects.append((x0, y0, x0 + w, y0 + h))
    return image, rects


def _keypoints(r: tuple[int, int, int, int]) -> list[float]:
    x0, y0, x1, y1 = r
    return [(x0 + x1) / 2, (y0 + y1) / 2, 2, float(x0), float(y0), 2, float(x1), float(y0), 2]


def write_coco_pose(root: Path, counts: dict[str, int]) -> None:
    """COCO person_keypoints-style files under ``root`` (train2017/, val2017/, annotations/)."""
    rng = np.random.default_rng(0)
    (root / "annotations").mkdir(parents=True)
    for split, n in counts.items():
        folder = root / f"{split}2017"
        folder.mkdir()
        images, anns = [], []
        for i in range(1, n + 1):
            image, rects = _rect_scene(rng)
            Image.fromarray(image).save(folder / f"{i:04d}.png")
            images.append({"id": i, "file_name": f"{i:04d}.png", "width": SIZE, "height": SIZE})
            for r in rects:
                x0, y0, x1, y1 = r
                anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1, "iscrowd": 0,
                             "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float((x1 - x0) * (y1 - y0)),
                             "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
                             "keypoints": _keypoints(r), "num_keypoints": 3})
        cats = [{"id": 1, "name": "box", "keypoints": NAMES, "skeleton": [[1, 2], [1, 3]]}]
        (root / "annotations" / f"person_keypoints_{split}2017.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats}))


def write_yolo_pose(root: Path, n: int) -> None:
    """An ultralytics-layout YOLO-pose folder: data.yaml with kpt_shape and flip_idx, images/ and labels/."""
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n if split == "train" else n // 2):
            image, rects = _rect_scene(rng)
            Image.fromarray(image).save(root / "images" / split / f"{i:04d}.png")
            lines = []
            for r in rects:
                x0, y0, x1, y1 = r
                k = _keypoints(r)
                pts = " ".join(f"{k[j] / SIZE:.5f} {k[j + 1] / SIZE:.5f} 2" for j in range(0, 9, 3))
                lines.append(f"0 {(x0 + x1) / 2 / SIZE:.5f} {(y0 + y1) / 2 / SIZE:.5f} {(x1 - x0) / SIZE:.5f} "
                             f"{(y1 - y0) / SIZE:.5f} {pts}")
            (root / "labels" / split / f"{i:04d}.txt").write_text("\n".join(lines) + "\n")
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: box\n"
                                    f"kpt_shape: [3, 3]\nflip_idx: [0, 2, 1]\n")


def _pycocotools_keypoint_ap(gt_file: Path, results_file: Path, sigmas: list[float]) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        ev = COCOeval(gt, gt.loadRes(str(results_file)), "keypoints")
        ev.params.kpt_oks_sigmas = np.array(sigmas)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


def test_coco_keypoints_train_evaluate_with_pycocotools_parity_predict_and_export(tmp_path):
    root = tmp_path / "coco"
    write_coco_pose(root, {"train": 24, "val": 8})
    data = ["experiment=coco_pose", f"data.root={root}", "data.num_keypoints=null"]
    run_dir = tmp_path / "run"
    res = run_cli("fourm21-train", [*data, *SMALL, "trainer.max_epochs=3", "data.aug.close_mosaic=1",
                                    f"hydra.run.dir={run_dir}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((run_dir / "report.json").read_text())
    assert {"val/kpt/map", "val/kpt/map50", "val/kpt/map75"} <= set(report)
    config = json.loads(json.dumps(__import__("yaml").safe_load((run_dir / "config.yaml").read_text())))
    head = config["model"]["heads"]["kpt"]
    assert head["keypoint_names"] == NAMES and head["skeleton"] == [[1, 2], [1, 3]] and head["sigmas"] == [0.1] * 3
    ckpt = run_dir / "checkpoints" / "last.ckpt"

    res = run_cli_here("fourm21-eval", [f"ckpt_path={ckpt}", *data, *DATA, "trainer.precision=32-true",
                                   f"hydra.run.dir={tmp_path / 'eval'}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    evaluated = json.loads((tmp_path / "eval" / "report.json").read_text())
    written = tmp_path / "eval" / "predictions" / "keypoints.json"
    results = json.loads(written.read_text())
    assert results and all(len(r["keypoints"]) == 9 for r in results)
    expected = _pycocotools_keypoint_ap(root / "annotations" / "person_keypoints_val2017.json", written, [0.1] * 3)
    assert evaluated["val/kpt/map"] == pytest.approx(expected, abs=1e-9)
    assert "kpt" in (tmp_path / "eval" / "report.md").read_text()

    res = run_cli_here("fourm21-predict", [f"ckpt_path={ckpt}", f"source={root / 'val2017'}", "score_thr=0.001",
                                      "save_overlays=true", f"hydra.run.dir={tmp_path / 'pred'}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    predicted = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert predicted["annotations"] and all(len(a["keypoints"]) == 9 for a in predicted["annotations"])
    assert list((tmp_path / "pred").rglob("*.png"))

    res = run_cli_here("fourm21-export", [f"ckpt_path={ckpt}", "format=onnx", "end2end=true", "verify_batch=1",
                                     f"paths.run_dir={tmp_path / 'export'}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    export_dir = next(p.parent for p in (tmp_path / "export").rglob("model.onnx"))
    import fourm21

    res = run_cli_here("fourm21-export", [f"ckpt_path={ckpt}", "format=openvino", "verify_batch=1",
                                     f"paths.run_dir={tmp_path / 'ov'}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    ov_dir = next(p.parent for p in (tmp_path / "ov").rglob("model.xml"))
    torch_model = fourm21.load(ckpt)
    images = sorted((root / "val2017").glob("*.png"))[:4]
    reference = torch_model.predict(images)
    for exported in (fourm21.load(export_dir), fourm21.load(ov_dir)):  # at the thresholds the graph holds
        worst, count = 0.0, 0
        for a, b in zip(reference, exported.predict(images)):
            assert len(a["keypoints"]) == len(b["keypoints"])
            if len(a["keypoints"]):
                worst = max(worst, float((a["keypoints"] - b["keypoints"]).abs().max()))
                count += len(a["keypoints"])
        assert count > 0 and worst <= 1e-3, (type(exported.runner).__name__, count, worst)

    (tmp_path / "serve").mkdir()  # the service on the end-to-end graph: keypoints in its JSON, drawn on its overlay
    with started_server([str(BIN / "fourm21-serve")], export_dir, tmp_path, tmp_path / "serve",
                        "score_thr=0.05") as srv, \
            images[0].open("rb") as f:
        r = httpx.post(f"{srv.url}/predict?overlay=true", files={"image": (images[0].name, f, "image/png")},
                       timeout=60)
    assert r.status_code == 200, r.text
    served = r.json()
    assert served["annotations"] and all(len(a["keypoints"]) == 9 for a in served["annotations"])
    np.testing.assert_allclose(served["annotations"][0]["keypoints"], reference[0]["keypoints"][0].flatten(),
                               atol=1e-3)
    assert served["overlay_png"]


def test_a_yolo_pose_folder_trains_and_predicts_keypoints(tmp_path):
    root = tmp_path / "yolo"
    write_yolo_pose(root, 16)
    run_dir = tmp_path / "run"
    res = run_cli("fourm21-train", ["experiment=yolo", f"data.root={root}",
                                    f"data.cache_dir={tmp_path / 'cache'}", "model.heads.kpt.enabled=true",
                                    "model.heads.sem.enabled=false", *SMALL, "trainer.max_epochs=1",
                                    f"hydra.run.dir={run_dir}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((run_dir / "report.json").read_text())
    assert "val/kpt/map50" in report
    config = __import__("yaml").safe_load((run_dir / "config.yaml").read_text())
    assert config["data"]["num_keypoints"] == 3 and config["model"]["heads"]["kpt"]["keypoint_names"] == ["0", "1", "2"]
    res = run_cli("fourm21-predict", [f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
                                      f"source={root / 'images' / 'val'}", "score_thr=0.001",
                                      f"hydra.run.dir={tmp_path / 'pred'}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    annotations = json.loads((tmp_path / "pred" / "predictions.json").read_text())["annotations"]
    assert annotations and all(len(a["keypoints"]) == 9 for a in annotations)
