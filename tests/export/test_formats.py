"""Every export format: written, loaded back, and equal to PyTorch on real images."""

import json

import pytest
import torch

import fourm21
from tests.conftest import run_cli


@pytest.mark.parametrize("fmt, artefact", [("safetensors", "export/model.safetensors"), ("onnx", "export/model.onnx"),
                                           ("torch_export", "export/model.pt2")])
def test_export_round_trip(tiny_run, tmp_path, fmt, artefact):
    work, run_dir, _ = tiny_run
    val_images = work / "data/shapes/images/val"
    out = tmp_path / fmt
    res = run_cli("fourm21-export", [f"ckpt_path={run_dir / 'checkpoints/best.ckpt'}", f"format={fmt}",
                                     f"verify_source={val_images}", "verify_batch=4", f"hydra.run.dir={out}"], work)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out / artefact).is_file()
    report = json.loads((out / "export_report.json").read_text())
    assert report["verify_batch"] == 4
    assert report["max_abs_diff_all"] <= 1e-4
    assert report["same_kept_boxes"] is True
    assert set(report["max_abs_diff"]) == {"cls.logits", "det.cls_logits", "det.box_ltrb", "det.centerness",
                                           "inst.proto", "inst.coefs", "sem.logits"}
    # fourm21.load runs every format and decodes with the same postprocess: same predictions as the checkpoint
    ref = fourm21.load(run_dir / "checkpoints/best.ckpt")
    exported = fourm21.load(out / "export")
    files = sorted(val_images.iterdir())[:3]
    for a, b in zip(ref.predict(files), exported.predict(files)):
        assert torch.equal(a["labels"], b["labels"])
        torch.testing.assert_close(a["boxes"], b["boxes"], atol=1e-3, rtol=0)
        torch.testing.assert_close(a["class_probs"], b["class_probs"], atol=1e-4, rtol=0)
        assert (a["masks"] != b["masks"]).float().mean() < 1e-3
    if fmt == "onnx":
        import onnx
        graph = onnx.load(str(out / artefact)).graph
        assert [i.name for i in graph.input] == ["images"]
        assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the batch axis is symbolic


def test_unknown_format_is_a_config_error(tiny_run, tmp_path):
    work, run_dir, _ = tiny_run
    res = run_cli("fourm21-export", [f"ckpt_path={run_dir / 'checkpoints/best.ckpt'}", "format=tflite",
                                     f"hydra.run.dir={tmp_path / 'x'}"], work)
    assert res.returncode == 2 and "format" in res.stderr and "tflite" in res.stderr
