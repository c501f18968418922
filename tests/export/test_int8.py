"""int8=true: the tiny trained model quantised for ONNX Runtime (QDQ) and OpenVINO (NNCF), calibrated on its
training images; written, checked, loaded by fourm21.load with no other argument, smaller than f32, and close
to the f32 export's predictions."""

from __future__ import annotations

import json

import pytest
import yaml
from hydra import compose, initialize_config_dir

import fourm21
from fourm21.engine.common import CONFIG_DIR
from fourm21.engine.export import run_export
from fourm21.errors import ConfigError
from fourm21.export.int8 import head_output_layers, prediction_agreement
from fourm21.inference.runners import OnnxRunner, OpenVinoRunner
from tests.conftest import run_cli_here

# the tolerance the int8 predictions are held to, against the f32 export's, on 4 val images at score >= 0.2
# (the tiny model after 2 epochs: few confident boxes, so one moved box weighs; measured: 1.0 / 0.9x)
MIN_DET_AGREEMENT = 0.75  # F1 of same-class IoU >= 0.5 matches
MIN_BOX_IOU = 0.85  # mean IoU of the matched boxes
MIN_CLASS_AGREEMENT = 0.75  # the image class (top-1) of the same image
MAX_RELATIVE_ERROR = 0.25  # ||int8 - f32|| / ||f32|| of each raw output, on the export check's held-out images


def export_in_process(tiny_run, out, *extra: str) -> dict:
    """``run_export`` as the CLI runs it, calibrated on the tiny run's 16 training images."""
    work, run_dir, _ = tiny_run
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("export", [f"ckpt_path={run_dir / 'checkpoints/best.ckpt'}", f"paths.data_dir={work / 'data'}",
                                 "calibration_images=12", "verify_batch=4", f"paths.run_dir={out}", *extra])
    return run_export(cfg)


@pytest.fixture(scope="module")
def onnx_pair(tiny_run, tmp_path_factory):
    """(f32 export dir, int8 export dir, the int8 export's report), format=onnx."""
    tmp = tmp_path_factory.mktemp("int8_onnx")
    export_in_process(tiny_run, tmp / "f32", "format=onnx")
    report = export_in_process(tiny_run, tmp / "int8", "format=onnx", "int8=true")
    return tmp / "f32" / "export", tmp / "int8" / "export", report


def agreement_with(tiny_run, f32_dir, int8_dir) -> dict:
    work = tiny_run[0]
    files = sorted((work / "data/shapes/images/val").iterdir())[:4]
    ref, int8 = fourm21.load(f32_dir), fourm21.load(int8_dir)
    return prediction_agreement(ref.predict(files), int8.predict(files), score_thr=0.2), int8


def test_onnx_int8_export_is_written_checked_smaller_and_loads(tiny_run, onnx_pair):
    import onnx

    f32_dir, int8_dir, report = onnx_pair
    assert {p.name for p in int8_dir.iterdir()} == {"model.onnx", "config.yaml", "classes.json"}
    meta = yaml.safe_load((int8_dir / "config.yaml").read_text())["meta"]
    assert meta["int8"]["calibration_images"] == 12 and "QDQ" in meta["int8"]["method"]
    assert meta["int8"]["keep_float"] == "head_outputs"
    assert report == json.loads((int8_dir.parent / "export_report.json").read_text())
    assert report["int8"]["quantised_layers"] > 10 and report["verify_batch"] == 4
    assert max(report["relative_error"].values()) <= MAX_RELATIVE_ERROR, report["relative_error"]
    assert report["size_mb"] < report["f32_size_mb"]
    assert (int8_dir / "model.onnx").stat().st_size < (f32_dir / "model.onnx").stat().st_size
    graph = onnx.load(str(int8_dir / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("DequantizeLinear") > 20 and ops.count("QuantizeLinear") > 10
    # the layers giving the heads' raw outputs read float weights: no DequantizeLinear produces their weight
    dequantised = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    kept = [n for n in graph.node if n.name in set(report["int8"]["float_layers"])]
    assert kept and all(n.input[1] not in dequantised for n in kept)

    agree, int8 = agreement_with(tiny_run, f32_dir, int8_dir)
    assert isinstance(int8.runner, OnnxRunner) and int8.meta["int8"]["calibration_images"] == 12
    assert agree["det_reference"] > 0, agree  # two empty sets would agree about nothing
    assert agree["det_agreement"] >= MIN_DET_AGREEMENT and agree["box_iou"] >= MIN_BOX_IOU, agree
    assert agree["class_label_agree"] >= MIN_CLASS_AGREEMENT, agree


def test_openvino_int8_export_by_nncf_is_checked_smaller_and_loads(tiny_run, onnx_pair, tmp_path):
    pytest.importorskip("nncf")
    import openvino as ov

    # the TorchScript exporter: the same network, in a third of the dynamo exporter's time (the ONNX test runs that)
    report = export_in_process(tiny_run, tmp_path / "ov", "format=openvino", "int8=true", "dynamo=false")
    int8_dir = tmp_path / "ov" / "export"
    assert (int8_dir / "model.xml").is_file() and not (int8_dir / "model.onnx").exists()
    assert "nncf" in report["int8"]["method"] and report["int8"]["fake_quantize_ops"] > 10
    assert report["openvino_precision"] == "f32" and report["size_mb"] < report["f32_size_mb"]
    assert max(report["relative_error"].values()) <= MAX_RELATIVE_ERROR, report["relative_error"]
    ir = ov.Core().read_model(str(int8_dir / "model.xml"))
    assert sum(op.get_type_name() == "FakeQuantize" for op in ir.get_ordered_ops()) > 10
    agree, int8 = agreement_with(tiny_run, onnx_pair[0], int8_dir)
    assert isinstance(int8.runner, OpenVinoRunner) and int8.meta["int8"]["keep_float"] == "head_outputs"
    assert agree["det_agreement"] >= MIN_DET_AGREEMENT and agree["box_iou"] >= MIN_BOX_IOU, agree


def test_head_output_layers_are_the_last_weighted_layer_before_each_output(onnx_pair):
    import onnx

    graph = onnx.load(str(onnx_pair[0] / "model.onnx")).graph
    layers = set(head_output_layers(graph))
    nodes = {n.name: n for n in graph.node}
    producer = {o: n for n in graph.node for o in n.output}
    assert layers and all(nodes[name].op_type in ("Conv", "Gemm", "MatMul") for name in layers)
    for output in graph.output:  # each of the seven raw outputs comes from one of them, through no other weights
        stack, found = [output.name], set()
        while stack:
            node = producer.get(stack.pop())
            if node is None:
                continue
            if node.op_type in ("Conv", "Gemm", "MatMul"):
                found.add(node.name)
            else:
                stack.extend(node.input)
        assert found and found <= layers, output.name
    assert len(layers) < sum(n.op_type == "Conv" for n in graph.node) / 2  # the heads' last layers, not the network


def test_int8_needs_onnx_or_openvino(tiny_run, tmp_path):
    with pytest.raises(ConfigError, match="int8=true: format=torch_export has no int8 export") as e:
        export_in_process(tiny_run, tmp_path / "x", "format=torch_export", "int8=true")
    assert "\n" not in str(e.value)


def test_a_model_without_training_data_asks_for_a_calibration_folder_in_one_line(tiny_run, tmp_path):
    export_in_process(tiny_run, tmp_path / "st", "format=safetensors")  # an export holds no data config
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("export", [f"ckpt_path={tmp_path / 'st/export'}", "format=onnx", "int8=true",
                                 f"paths.run_dir={tmp_path / 'x'}"])
    with pytest.raises(ConfigError, match="records no training data to calibrate on; give calibration_source=") as e:
        run_export(cfg)
    assert "\n" not in str(e.value)


def test_missing_calibration_data_is_one_line_from_the_cli(tiny_run, tmp_path):
    work, run_dir, _ = tiny_run
    res = run_cli_here("fourm21-export", [f"ckpt_path={run_dir / 'checkpoints/best.ckpt'}", "format=onnx", "int8=true",
                                     f"calibration_source={tmp_path / 'empty'}", f"hydra.run.dir={tmp_path / 'x'}"],
                  work)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr[-2000:]
    assert lines[0].startswith("fourm21: DatasetError: calibration_source:") and "empty" in lines[0]
