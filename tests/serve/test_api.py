"""The service's endpoints with a real HTTP client against the ``fourm21-serve`` process (see conftest)."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from fourm21.engine.common import CONFIG_DIR
from fourm21.engine.predict import run_predict


def assert_close(got: object, want: object, path: str = "") -> None:
    """Equal JSON, floats up to 1e-4 (the service may have run the image in a batch with others)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), f"{path}: keys {got} != {want}"
        for k in want:
            assert_close(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{path}: {got} != {want}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, abs=1e-4), path
    else:
        assert got == want, path


def test_health(server):
    r = httpx.get(f"{server.url}/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_info_describes_the_model(server):
    info = httpx.get(f"{server.url}/info").json()
    assert info["heads"] == ["cls", "det", "inst", "sem"]
    assert info["class_names"] == ["circle", "square", "triangle"]
    assert info["image_class_names"] == ["forest", "desert", "ocean", "dusk"]
    assert info["img_size"] == 64
    assert info["thresholds"]["score_thr"] == 0.0 and info["thresholds"]["max_det"] == 5
    assert info["limits"] == {"max_upload_mb": 0.25, "max_image_pixels": 250000, "request_timeout_s": 30,
                              "max_queue": 64, "queue_timeout_s": 10, "max_header_bytes": 8192}
    assert info["batching"]["max_batch_size"] == 8 and info["batching"]["queue_depth"] == 0


def test_predict_answers_as_fourm21_predict_writes(server, tiny_run, sample_image, tmp_path):
    """Same image, same thresholds: the service's image entry and annotations are predictions.json's."""
    r = httpx.post(f"{server.url}/predict", files={"image": (sample_image.name, sample_image.read_bytes())})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["server"]["batch_size"] >= 1
    assert len(got["annotations"]) > 0

    _, run_dir, _ = tiny_run
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("predict", [f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}", f"source={sample_image}",
                                  "score_thr=0.0", "max_det=5", "save_overlays=false", "device=cpu",
                                  f"paths.run_dir={tmp_path / 'predict'}"])
    want = run_predict(cfg)
    assert_close(got["image"], dict(want["images"][0], file_name=sample_image.name))
    assert_close(got["annotations"], want["annotations"])


def test_predict_json_base64_and_overlay(server, sample_image):
    payload = {"image": base64.b64encode(sample_image.read_bytes()).decode(), "file_name": "x.png"}
    r = httpx.post(f"{server.url}/predict", params={"overlay": "true", "masks": "false"}, json=payload)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["image"]["file_name"] == "x.png" and out["image"]["width"] == 64
    assert out["annotations"] and all("segmentation" not in a for a in out["annotations"])
    png = base64.b64decode(out["overlay_png"])
    assert png.startswith(b"\x89PNG")
    overlay = np.asarray(Image.open(io.BytesIO(png)))
    assert overlay.ndim == 3 and overlay.shape[2] == 3 and min(overlay.shape[:2]) >= 64


def test_a_data_url_is_accepted(server, sample_image):
    data = "data:image/png;base64," + base64.b64encode(sample_image.read_bytes()).decode()
    r = httpx.post(f"{server.url}/predict", json={"image": data})
    assert r.status_code == 200, r.text
    assert r.json()["image"]["file_name"] is None


def test_the_page_is_served(server):
    r = httpx.get(f"{server.url}/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'id="detections"' in r.text and "predict?overlay=true" in r.text
