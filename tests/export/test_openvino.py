"""format=openvino: the IR converted from the ONNX graph, checked against PyTorch, loaded by fourm21.load."""

import json

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

import fourm21
from fourm21.engine.common import CONFIG_DIR
from fourm21.engine.export import run_export
from fourm21.errors import ConfigError
from fourm21.export.formats import canonical, export_onnx_end2end, onnx_to_openvino, same_detections
from fourm21.inference.model import Fourm21Model
from fourm21.inference.runners import OpenVinoRunner
from fourm21.models.multitask import build_model
from tests.conftest import model_config, run_cli


def export_args(tiny_run, *extra: str) -> list[str]:
    work, run_dir, _ = tiny_run
    return [f"ckpt_path={run_dir / 'checkpoints/best.ckpt'}", "format=openvino",
            f"verify_source={work / 'data/shapes/images/val'}", "verify_batch=4", *extra]


def export_in_process(tiny_run, out, *extra: str) -> dict:
    """``run_export`` as the CLI runs it, without a new interpreter's start-up (~10 s here)."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("export", [*export_args(tiny_run, *extra), f"paths.run_dir={out}"])
    return run_export(cfg)


def export(tiny_run, out, *extra: str) -> dict:
    res = run_cli("fourm21-export", [*export_args(tiny_run, *extra), f"hydra.run.dir={out}"], tiny_run[0])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "same kept boxes after NMS: True" in res.stdout
    assert (out / "export/model.xml").is_file() and (out / "export/model.bin").is_file()
    assert not (out / "export/model.onnx").exists()  # fourm21.load must pick the IR, not an ONNX graph
    return json.loads((out / "export_report.json").read_text())


def checkpoint_and_export(tiny_run, export_dir) -> tuple[list[dict], list[dict]]:
    """The checkpoint's and the export's predictions on three real val images, at score_thr 0.2."""
    work, run_dir, _ = tiny_run
    ref, exported = fourm21.load(run_dir / "checkpoints/best.ckpt"), fourm21.load(export_dir)
    assert isinstance(exported.runner, OpenVinoRunner) and exported.net is None
    files = sorted((work / "data/shapes/images/val").iterdir())[:3]
    for model in (ref, exported):
        model.set_thresholds(score_thr=0.2)  # keep the comparison to boxes whose order is not a matter of ties
    refs, outs = ref.predict(files), exported.predict(files)
    assert sum(len(a["boxes"]) for a in refs) > 0  # two empty sets would agree about nothing
    return refs, outs


def test_openvino_export_matches_pytorch_and_loads(tiny_run, tmp_path):
    out = tmp_path / "ov"
    report = export(tiny_run, out)
    assert report["format"] == "openvino" and report["openvino_precision"] == "f32" and report["verify_batch"] == 4
    assert report["max_abs_diff_all"] <= 1e-3  # box_ltrb is in pixels (values ~10-100): float noise ~1e-4
    assert report["same_kept_boxes"] is True and report["nms_in_graph"] is False
    assert set(report["max_abs_diff"]) == {"cls.logits", "det.cls_logits", "det.box_ltrb", "det.centerness",
                                           "inst.proto", "inst.coefs", "sem.logits"}
    assert report["size_mb"] > 0 and report["dynamic_batch"] is True
    import openvino as ov

    ir = ov.Core().read_model(str(out / "export/model.xml"))
    assert [i.any_name for i in ir.inputs] == ["images"] and ir.inputs[0].get_partial_shape()[0].is_dynamic
    refs, outs = checkpoint_and_export(tiny_run, out / "export")
    for a, b in zip(refs, outs):
        assert same_detections((a["boxes"], a["scores"], a["labels"]), (b["boxes"], b["scores"], b["labels"]))
        torch.testing.assert_close(a["class_probs"], b["class_probs"], atol=1e-4, rtol=0)
        assert torch.equal(a["semantic"], b["semantic"])


def test_openvino_end2end_runs_nms_inside_and_matches_pytorch(tiny_run, tmp_path):
    out = tmp_path / "ov_e2e"
    report = export_in_process(tiny_run, out, "end2end=true")
    assert (out / "export/model.xml").is_file() and not (out / "export/model.onnx").exists()
    assert report == json.loads((out / "export_report.json").read_text())
    assert report["nms_in_graph"] is True and report["same_kept_boxes"] is True
    assert report["max_abs_diff_all"] <= 1e-4 and report["sem_labels_agree"] > 0.99
    refs, outs = checkpoint_and_export(tiny_run, out / "export")
    assert sum(len(a["masks"]) for a in refs) > 0
    for a, b in zip(refs, outs):
        assert same_detections((a["boxes"], a["scores"], a["labels"]), (b["boxes"], b["scores"], b["labels"]))
        assert torch.equal(a["semantic"], b["semantic"])
        if len(a["masks"]):
            order_a = canonical(a["boxes"], a["scores"], torch.arange(len(a["scores"])))[2]
            order_b = canonical(b["boxes"], b["scores"], torch.arange(len(b["scores"])))[2]
            assert (a["masks"][order_a] != b["masks"][order_b]).float().mean() < 1e-2


def test_end2end_ir_returns_no_detection_when_none_passes_the_threshold(tmp_path):
    """torchvision's NMS returns an empty Constant from an If branch when no box is left; OpenVINO's ONNX
    reader made that a scalar 0, i.e. one phantom detection, unless ``onnx_to_openvino`` rewrites it."""
    cfg = model_config(**{"heads.det.score_thr": 1.5})  # sqrt(sigmoid x sigmoid) < 1: nothing passes
    model = Fourm21Model.from_net(build_model(cfg).eval(), cfg, {"img_size": 64})
    export_onnx_end2end(model, tmp_path / "e2e.onnx", 64)
    assert onnx_to_openvino(tmp_path / "e2e.onnx", tmp_path / "e2e.xml")["empty_constants_rewritten"] >= 1
    got = OpenVinoRunner(tmp_path / "e2e.xml").run(torch.zeros(2, 3, 64, 64))
    assert got["det_batch_index"].shape == (0,) and got["det_boxes"].shape == (0, 4)
    assert got["cls_probs"].shape == (2, 4) and np.isfinite(got["cls_probs"].numpy()).all()


def test_unknown_openvino_precision_is_a_config_error(tiny_run, tmp_path):
    with pytest.raises(ConfigError, match="openvino_precision: 'int4'"):
        export_in_process(tiny_run, tmp_path / "x", "openvino_precision=int4")
