"""A task kind added from outside the package (tests/tasks/brightness.py) plus one config entry goes through
fourm21-train -> fourm21-eval -> fourm21-predict -> fourm21-export (end-to-end ONNX) -> fourm21.load ->
fourm21-serve, without a change to any file of the package."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from tests.conftest import BIN, REPO, TINY, run_cli
from tests.serve.conftest import started_server

# the one config entry: the head class (whose module registers the task) and its settings
ENTRY = "+model.heads.bright={_target_:tests.tasks.brightness.BrightnessHead,enabled:true,hidden:32}"


def _with_tests_importable(monkeypatch) -> None:
    """The CLIs import the config's ``_target_`` (tests.tasks.brightness): the repository on PYTHONPATH."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))


def test_a_task_from_outside_the_package_runs_through_every_cli(tmp_path, monkeypatch):
    _with_tests_importable(monkeypatch)
    run_dir = tmp_path / "run"
    res = run_cli("fourm21-train", [*TINY, ENTRY, f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={run_dir}",
                                    "trainer.max_epochs=2"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((run_dir / "report.json").read_text())
    assert 0.0 <= report["val/bright/mae"] < 0.5 and "val/bright/loss" in report and "val/det/map" in report
    ckpt = run_dir / "checkpoints" / "last.ckpt"

    res = run_cli("fourm21-eval", [f"ckpt_path={ckpt}", *TINY[:3], "trainer.precision=32-true",
                                   f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'eval'}"],
                  tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    evaluated = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert abs(evaluated["val/bright/mae"] - report["val/bright/mae"]) < 1e-6  # the same weights, the same set

    photos = tmp_path / "photos"
    photos.mkdir()
    dark, light = np.full((40, 60, 3), 30, np.uint8), np.full((40, 60, 3), 220, np.uint8)
    Image.fromarray(dark).save(photos / "a_dark.png")
    Image.fromarray(light).save(photos / "b_light.png")
    res = run_cli("fourm21-predict", [f"ckpt_path={ckpt}", f"source={photos}", f"hydra.run.dir={tmp_path / 'pred'}"],
                  tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    images = json.loads((tmp_path / "pred" / "predictions.json").read_text())["images"]
    predicted = {Path(im["file_name"]).name: im["brightness"] for im in images}
    assert set(predicted) == {"a_dark.png", "b_light.png"} and all(0 <= v <= 1 for v in predicted.values())

    res = run_cli("fourm21-export", [f"ckpt_path={ckpt}", "format=onnx", "end2end=true", "verify_batch=1",
                                     f"paths.run_dir={tmp_path / 'export'}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    export_dir = next(p.parent for p in (tmp_path / "export").rglob("model.onnx"))

    import fourm21  # in this process: tests.tasks.brightness is importable here as in the CLIs

    model = fourm21.load(export_dir)
    assert model.net is None and model.settings.heads["bright"] == "bright"
    loaded = {name: float(model.predict(photos / name)[0]["brightness"]) for name in predicted}
    for name, value in loaded.items():  # the ONNX graph computes what the checkpoint did
        assert abs(value - predicted[name]) < 1e-4, (name, value, predicted[name])

    (tmp_path / "serve").mkdir()
    with started_server([str(BIN / "fourm21-serve")], export_dir, tmp_path, tmp_path / "serve") as srv:
        with (photos / "b_light.png").open("rb") as f:
            r = httpx.post(f"{srv.url}/predict", files={"image": ("b_light.png", f, "image/png")}, timeout=60)
        assert r.status_code == 200, r.text
        assert abs(r.json()["image"]["brightness"] - predicted["b_light.png"]) < 1e-4
        assert "bright" in httpx.get(f"{srv.url}/info", timeout=30).json()["heads"]
