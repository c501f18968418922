"""Every export format: written, loaded back, and equal to PyTorch on real images."""

import json

import pytest
import torch

import fourm21
from fourm21.export.formats import canonical, same_detections
from tests.conftest import run_cli_here


@pytest.mark.parametrize("fmt, artefact", [("safetensors", "export/model.safetensors"), ("onnx", "export/model.onnx"),
                                           ("torch_export", "export/model.pt2")])
def test_export_round_trip(tiny_run, tmp_path, fmt, artefact):
    work, run_dir, _ = tiny_run
    val_images = work / "data/shapes/images/val"
    out = tmp_path / fmt
    res = run_cli_here("fourm21-export", [f"ckpt_path={run_dir / 'checkpoints/best.ckpt'}", f"format={fmt}",
                                     f"verify_source={val_images}", "verify_batch=4", f"hydra.run.dir={out}"], work)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out / artefact).is_file()
    report = json.loads((out / "export_report.json").read_text())
    assert report["verify_batch"] == 4
    assert report["max_abs_diff_all"] <= 1e-3  # box_ltrb is in pixels (values ~10-100): float noise ~1e-4
    assert report["same_kept_boxes"] is True
    assert set(report["max_abs_diff"]) == {"cls.logits", "det.cls_logits", "det.box_ltrb", "det.centerness",
                                           "inst.proto", "inst.coefs", "sem.logits"}
    # fourm21.load runs every format and decodes with the same postprocess: same predictions as the checkpoint
    ref = fourm21.load(run_dir / "checkpoints/best.ckpt")
    exported = fourm21.load(out / "export")
    files = sorted(val_images.iterdir())[:3]
    for model in (ref, exported):
        model.set_thresholds(score_thr=0.2)  # keep the comparison to boxes whose order is not a matter of ties
    refs, outs = ref.predict(files), exported.predict(files)
    assert sum(len(a["boxes"]) for a in refs) > 0  # two empty sets would agree about nothing
    for a, b in zip(refs, outs):
        assert same_detections((a["boxes"], a["scores"], a["labels"]), (b["boxes"], b["scores"], b["labels"]))
        torch.testing.assert_close(a["class_probs"], b["class_probs"], atol=1e-4, rtol=0)
    if fmt == "onnx":
        import onnx
        graph = onnx.load(str(out / artefact)).graph
        assert [i.name for i in graph.input] == ["images"]
        assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the batch axis is symbolic


def test_unknown_format_is_a_config_error(tiny_run, tmp_path):
    work, run_dir, _ = tiny_run
    res = run_cli_here("fourm21-export", [f"ckpt_path={run_dir / 'checkpoints/best.ckpt'}", "format=tflite",
                                     f"hydra.run.dir={tmp_path / 'x'}"], work)
    assert res.returncode == 2 and "format" in res.stderr and "tflite" in res.stderr


def test_onnx_end2end_has_nms_inside_and_matches_pytorch(tiny_run, tmp_path):
    work, run_dir, _ = tiny_run
    val_images = work / "data/shapes/images/val"
    out = tmp_path / "e2e"
    res = run_cli_here("fourm21-export", [f"ckpt_path={run_dir / 'checkpoints/best.ckpt'}", "format=onnx",
                                          "end2end=true", f"verify_source={val_images}", f"hydra.run.dir={out}"], work)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((out / "export_report.json").read_text())
    assert report["nms_in_graph"] is True and report["same_kept_boxes"] is True
    assert report["sem_labels_agree"] > 0.99
    import onnx
    graph = onnx.load(str(out / "export/model.onnx")).graph

    def op_types(g):  # NMS sits in a subgraph (torchvision guards the empty case with an If)
        for node in g.node:
            yield node.op_type
            for attr in node.attribute:
                if attr.g.node:
                    yield from op_types(attr.g)
    assert "NonMaxSuppression" in set(op_types(graph))
    assert [o.name for o in graph.output][:4] == ["det_batch_index", "det_boxes", "det_scores", "det_labels"]
    ref = fourm21.load(run_dir / "checkpoints/best.ckpt")
    exported = fourm21.load(out / "export")
    files = sorted(val_images.iterdir())[:3]
    for model in (ref, exported):
        model.set_thresholds(score_thr=0.2)
    refs, outs = ref.predict(files), exported.predict(files)
    assert sum(len(a["boxes"]) for a in refs) > 0 and sum(len(a["masks"]) for a in refs) > 0
    for a, b in zip(refs, outs):
        assert same_detections((a["boxes"], a["scores"], a["labels"]), (b["boxes"], b["scores"], b["labels"]))
        assert torch.equal(a["semantic"], b["semantic"])
        if len(a["masks"]):
            order_a = canonical(a["boxes"], a["scores"], torch.arange(len(a["scores"])))[2]
            order_b = canonical(b["boxes"], b["scores"], torch.arange(len(b["scores"])))[2]
            assert (a["masks"][order_a] != b["masks"][order_b]).float().mean() < 1e-2
