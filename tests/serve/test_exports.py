"""The service over every format ``fourm21.load`` reads: the app in-process over a checkpoint, a safetensors
directory, ONNX (raw and end-to-end), a ``.pt2`` program and OpenVINO IR answers ``/predict`` and ``/info``
as it does over the checkpoint; the ``fourm21-serve`` CLI itself over an ONNX export directory.

An export has no PyTorch network (``model.net`` is None): the service must not need one."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import torch
from hydra import compose, initialize_config_dir
from starlette.testclient import TestClient

from fourm21.engine.common import CONFIG_DIR
from fourm21.engine.export import run_export
from fourm21.export.formats import same_detections
from fourm21.inference.loading import load
from fourm21.inference.model import Fourm21Model
from fourm21.serve.app import create_app
from fourm21.serve.settings import ServeSettings
from tests.conftest import BIN
from tests.serve.conftest import started_server

# fourm21-export's overrides per export directory; all f32, so each should predict what the checkpoint does
EXPORTS = {"safetensors": ["format=safetensors"], "onnx": ["format=onnx"],
           "onnx_end2end": ["format=onnx", "end2end=true"], "torch_export": ["format=torch_export"],
           "openvino": ["format=openvino"]}
FORMATS = ["checkpoint", *EXPORTS]
# the export tests' threshold: the barely trained model has detections above it, and none tied in order
SCORE_THR = 0.2


@pytest.fixture(scope="module")
def exports(tiny_run, tmp_path_factory) -> dict[str, Path]:
    """{format: what ``ckpt_path=`` takes}: the session's checkpoint and one export directory per format,
    written once for the module by ``run_export`` as the CLI runs it (without a new interpreter per format)."""
    ckpt = tiny_run[1] / "checkpoints" / "best.ckpt"
    root = tmp_path_factory.mktemp("serve_exports")
    paths = {"checkpoint": ckpt}
    for name, args in EXPORTS.items():
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("export", [f"ckpt_path={ckpt}", *args, "verify_batch=1", f"paths.run_dir={root / name}"])
        report = run_export(cfg)
        assert report["same_kept_boxes"] is True, (name, report)
        paths[name] = Path(report["path"])
    return paths


def serve_settings(ckpt_path: Path) -> ServeSettings:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return ServeSettings.from_config(compose("serve", [f"ckpt_path={ckpt_path}", f"score_thr={SCORE_THR}"]))


def ask(path: Path, image: Path) -> tuple[Fourm21Model, dict, dict]:
    """Load ``path`` as fourm21-serve does, and ask the app for ``/info`` and ``/predict`` of ``image``:
    (the loaded model, /info, /predict)."""
    model = load(path, "cpu")
    with TestClient(create_app(model, serve_settings(path), str(path))) as client:
        info = client.get("/info")
        pred = client.post("/predict", files={"image": (image.name, image.read_bytes())})
    assert info.status_code == 200, info.text
    assert pred.status_code == 200, pred.text
    return model, info.json(), pred.json()


@pytest.fixture(scope="module")
def reference(exports, sample_image) -> tuple[list[str], dict]:
    """The checkpoint's network heads and its ``/predict`` answer, to hold every format to."""
    ckpt, _, pred = ask(exports["checkpoint"], sample_image)
    assert len(pred["annotations"]) > 0  # two empty answers would agree about nothing
    return list(ckpt.net.heads.keys()), pred


def detections(answer: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(boxes xyxy, scores, category ids) of a ``/predict`` answer's annotations (bbox is xywh)."""
    anns = answer["annotations"]
    xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float64).reshape(-1, 4)
    boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
    return (boxes, torch.tensor([a["score"] for a in anns], dtype=torch.float64),
            torch.tensor([a["category_id"] for a in anns], dtype=torch.long))


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_is_served_like_the_checkpoint(fmt, exports, reference, sample_image):
    ref_heads, ref = reference
    model, info, got = ask(exports[fmt], sample_image)
    assert (model.net is None) == (fmt not in ("checkpoint", "safetensors"))  # the runners without a network

    assert info["model"] == str(exports[fmt])
    assert info["heads"] == model.heads == ref_heads == ["cls", "det", "inst", "sem"]
    assert info["thresholds"]["score_thr"] == SCORE_THR

    # the same structure: image entry, annotations list, with the same keys throughout
    assert got.keys() == ref.keys() == {"image", "annotations", "server"}
    assert got["image"].keys() == ref["image"].keys()
    assert {k: got["image"][k] for k in ("file_name", "height", "width")} == \
        {k: ref["image"][k] for k in ("file_name", "height", "width")}
    assert isinstance(got["annotations"], list)
    assert [a.keys() for a in got["annotations"]] == [ref["annotations"][0].keys()] * len(got["annotations"])
    assert "segmentation" in ref["annotations"][0]  # the mask head's RLEs are there too

    # the same predictions: image class, and the detections as a set (count, boxes, scores, classes)
    assert got["image"]["classification"]["class_id"] == ref["image"]["classification"]["class_id"]
    assert got["image"]["classification"]["score"] == pytest.approx(ref["image"]["classification"]["score"], abs=1e-4)
    assert len(got["annotations"]) == len(ref["annotations"])
    assert same_detections(detections(got), detections(ref), box_tol=1e-2, score_tol=1e-3), \
        (got["annotations"], ref["annotations"])


def test_the_serve_cli_answers_over_an_onnx_export(exports, reference, tiny_run, sample_image, tmp_path):
    """``fourm21-serve ckpt_path=<ONNX end-to-end export>``: starts (it printed the heads of a model that has
    no network), and answers /predict and /info over real HTTP on 127.0.0.1."""
    ref_heads, ref = reference
    export_dir = exports["onnx_end2end"]
    with started_server([str(BIN / "fourm21-serve")], export_dir, tiny_run[0], tmp_path, f"score_thr={SCORE_THR}",
                        "num_threads=2", "log_level=warning") as srv:
        info = httpx.get(f"{srv.url}/info", timeout=30)
        r = httpx.post(f"{srv.url}/predict", files={"image": (sample_image.name, sample_image.read_bytes())},
                       timeout=30)
        log = srv.log_tail()
    assert info.status_code == 200, info.text
    assert info.json()["heads"] == ref_heads and info.json()["model"] == str(export_dir)
    assert f"fourm21-serve: {export_dir} (heads: {', '.join(ref_heads)}) on {srv.url}/" in log
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["image"]["file_name"] == sample_image.name
    assert len(got["annotations"]) == len(ref["annotations"])
    assert same_detections(detections(got), detections(ref), box_tol=1e-2, score_tol=1e-3)
