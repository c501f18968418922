"""Export a trained network: safetensors directory, ONNX (checked with onnxruntime), torch.export .pt2,
OpenVINO IR (converted from the ONNX graph, checked with OpenVINO's CPU plugin)."""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import save_file

from fourm21.export.end2end import EndToEnd
from fourm21.inference.decode import decode, decode_batch, split_images
from fourm21.inference.loading import load
from fourm21.inference.model import Fourm21Model
from fourm21.inference.raw_outputs import RawOutputs, output_names, restore_outputs
from fourm21.inference.runners import OpenVinoRunner
from fourm21.models.backbone import INPUT_CONTRACT

FORMATS = ("safetensors", "onnx", "torch_export", "openvino")
OPENVINO_PRECISIONS = ("f32", "bf16")  # the CPU plugin's inference precision


def write_model_card(model: Fourm21Model, out_dir: Path, img_size: int | None = None,
                     output_names: list[str] | None = None, extra_meta: dict | None = None) -> None:
    """``config.yaml`` (model config + inference meta) and ``classes.json``: what every export directory
    needs besides the network itself, so ``fourm21.load(out_dir)`` can decode its outputs without one:
    every head's decode settings as in force (``meta.decode``: tuned multi-label thresholds, the semantic
    ``label_stride`` an end-to-end graph bakes in ...), a graph's output names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {k: v for k, v in model.meta.items() if k not in ("class_names", "image_class_names")}
    if img_size:
        meta["img_size"] = int(img_size)
    if model.net is not None:  # what the graph takes (it normalises inside) and the statistics it normalises with
        meta.update(input=INPUT_CONTRACT, mean=list(model.net.backbone.mean), std=list(model.net.backbone.std))
    meta["decode"] = model.settings.saved()
    if output_names:
        meta["output_names"] = list(output_names)
    meta.update(extra_meta or {})
    (out_dir / "config.yaml").write_text(yaml.safe_dump({"model": model.model_config, "meta": meta}, sort_keys=False))
    (out_dir / "classes.json").write_text(json.dumps({"class_names": model.class_names,
                                                      "image_class_names": model.image_class_names}, indent=1))


def export_safetensors(model: Fourm21Model, out_dir: Path) -> Path:
    """``model.safetensors`` + config + classes: ``fourm21.load(out_dir)`` rebuilds the exact network
    without Lightning and without pickle."""
    write_model_card(model, out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "fourm21"})
    return out_dir / "model.safetensors"


def canonical(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Detections in an order that does not depend on how ties in score were broken."""
    keys = sorted(range(len(scores)), key=lambda i: (-round(float(scores[i]), 4), int(labels[i]),
                                                     round(float(boxes[i, 0]), 1), round(float(boxes[i, 1]), 1)))
    idx = torch.tensor(keys, dtype=torch.long)
    return boxes[idx], scores[idx], labels[idx]


def same_detections(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...], box_tol: float = 1e-3,
                    score_tol: float = 1e-4) -> bool:
    """(boxes, scores, labels) of two decoders are the same set, up to float noise, in any order
    (tied scores may be ordered differently): every detection pairs with one of the other side's."""
    (b1, s1, l1), (b2, s2, l2) = a, b
    if len(b1) != len(b2):
        return False
    if not len(b1):
        return True
    compat = ((b1[:, None, :].float() - b2[None, :, :].float()).abs().amax(-1) <= box_tol) \
        & ((s1[:, None].float() - s2[None, :].float()).abs() <= score_tol) & (l1[:, None].long() == l2[None, :].long())
    used = torch.zeros(len(b2), dtype=torch.bool)
    for i in range(len(b1)):
        free = (compat[i] & ~used).nonzero()
        if not len(free):
            return False
        used[free[0, 0]] = True
    return True


def _kept_boxes(model: Fourm21Model, names: list[str], tensors: list[torch.Tensor], size: tuple[int, int]) -> list:
    preds = decode(restore_outputs(names, tensors), size, model.settings)
    return [(p["boxes"], p["scores"], p["labels"]) if "boxes" in p else None for p in preds]


def compare_outputs(model: Fourm21Model, names: list[str], ours: list[torch.Tensor], theirs: list[torch.Tensor],
                    size: tuple[int, int]) -> dict[str, Any]:
    """Max abs difference per raw output, and whether decoding both gives the same kept boxes."""
    diffs = {n: float((a.float() - b.float()).abs().max()) for n, a, b in zip(names, ours, theirs)}
    same = True
    for a, b in zip(_kept_boxes(model, names, ours, size), _kept_boxes(model, names, theirs, size)):
        same &= a is None or same_detections(a, b)
    return {"max_abs_diff": diffs, "max_abs_diff_all": max(diffs.values()), "same_kept_boxes": bool(same)}


def export_onnx(model: Fourm21Model, path: Path, img_size: int, opset: int = 18, dynamo: bool = True) -> dict:
    """ONNX graph with input ``images`` (B, 3, S, S), dynamic batch, outputs named ``task.key``."""
    names = output_names(model.net, img_size)
    wrapper = RawOutputs(model.net.cpu().eval(), names).eval()  # the exporter restores the wrapper's mode
    example = torch.zeros(2, 3, img_size, img_size)
    used = "dynamo"
    try:
        if not dynamo:
            raise RuntimeError("dynamo=false")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, (example,), str(path), input_names=["images"], output_names=names,
                              opset_version=opset, dynamo=True, external_data=False,
                              dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1, max=4096)}})
    except Exception as e:  # noqa: BLE001 - fall back to the TorchScript exporter, and say so
        used = f"torchscript (dynamo failed: {str(e).splitlines()[0][:120]})" if dynamo else "torchscript"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, (example,), str(path), input_names=["images"], output_names=names,
                              opset_version=opset, dynamo=False,
                              dynamic_axes={"images": {0: "batch"}, **{n: {0: "batch"} for n in names}})
    return {"exporter": used, "output_names": names}


def export_onnx_end2end(model: Fourm21Model, path: Path, img_size: int, opset: int = 18) -> dict:
    """ONNX graph with decoding, NMS and mask assembly inside (``fourm21.export.end2end``)."""
    wrapper = EndToEnd(model.net.cpu().eval(), model.settings).eval()  # the exporter restores the mode onto the net
    example = torch.zeros(2, 3, img_size, img_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the TorchScript exporter maps torchvision's NMS to ONNX NonMaxSuppression
        torch.onnx.export(wrapper, (example,), str(path), input_names=["images"], output_names=wrapper.names,
                          opset_version=opset, dynamo=False,
                          dynamic_axes=wrapper.dynamic_axes())
    return {"exporter": "torchscript", "output_names": wrapper.names, "nms_in_graph": True}


def verify_onnx_end2end(model: Fourm21Model, path: Path, images: torch.Tensor) -> dict:
    """Kept detections (``max_det`` per image, as baked into the graph) and the semantic map from ONNX
    Runtime vs the PyTorch model's ``postprocess``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, (torch.from_numpy(np.asarray(a)) for a in session.run(names, {"images": images.numpy()}))))
    return compare_end2end(model, got, images)


def compare_end2end(model: Fourm21Model, got: dict[str, torch.Tensor], images: torch.Tensor) -> dict:
    """An end-to-end graph's outputs ``got`` on ``images`` vs the PyTorch model's decoding: the kept
    detections of every image as sets (``same_kept_boxes``, their ``scores``' largest difference), each
    float image-level output's largest difference and each integer one's agreement (``<name>_agree``: ties
    may break differently)."""
    size = tuple(images.shape[-2:])
    with torch.no_grad():
        ref_batch = decode_batch(model.net.cpu().eval()(images), size, model.settings)
    ref = split_images(ref_batch, len(images), size, model.settings)
    mine_all = split_images(got, len(images), size, model.settings)
    same, diff = True, 0.0
    for mine, p in zip(mine_all, ref):
        if "boxes" not in p:
            continue
        a, b = (mine["boxes"], mine["scores"], mine["labels"]), (p["boxes"], p["scores"], p["labels"])
        same &= same_detections(a, b)
        if len(a[1]) == len(b[1]) and len(b[1]):
            diff = max(diff, float((canonical(*a)[1] - canonical(*b)[1]).abs().max()))
    report: dict[str, Any] = {"same_kept_boxes": bool(same), "max_abs_diff": {"scores": diff}}
    flat = {k for task in model.settings.tasks.values() for k in task.flat_keys}
    for name, value in got.items():
        if name in flat or name not in ref_batch:
            continue
        if value.is_floating_point():
            report["max_abs_diff"][name] = float((value.float() - ref_batch[name].float()).abs().max())
        else:
            report[f"{name}_agree"] = float((value == ref_batch[name]).float().mean())
    report["max_abs_diff_all"] = max(report["max_abs_diff"].values())
    return report


def verify_onnx(model: Fourm21Model, path: Path, images: torch.Tensor) -> dict:
    import onnxruntime as ort

    names = output_names(model.net, images.shape[-1])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    theirs = [torch.from_numpy(np.asarray(a)) for a in session.run(names, {"images": images.numpy()})]
    with torch.no_grad():
        ours = list(RawOutputs(model.net.cpu().eval(), names)(images))
    return compare_outputs(model, names, ours, theirs, tuple(images.shape[-2:]))


def export_torch(model: Fourm21Model, path: Path, img_size: int) -> dict:
    """A ``.pt2`` program from ``torch.export`` with a dynamic batch dimension."""
    names = output_names(model.net, img_size)
    wrapper = RawOutputs(model.net.cpu().eval(), names)
    program = torch.export.export(wrapper, (torch.zeros(2, 3, img_size, img_size),),
                                  dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1, max=4096)}})
    torch.export.save(program, str(path))
    return {"output_names": names}


def verify_torch(model: Fourm21Model, path: Path, images: torch.Tensor) -> dict:
    names = output_names(model.net, images.shape[-1])
    loaded = torch.export.load(str(path)).module()
    with torch.no_grad():
        theirs = list(loaded(images))
        ours = list(RawOutputs(model.net.cpu().eval(), names)(images))
    return compare_outputs(model, names, ours, theirs, tuple(images.shape[-2:]))


def verify_safetensors(model: Fourm21Model, directory: Path, images: torch.Tensor) -> dict:
    names = output_names(model.net, images.shape[-1])
    again = load(directory)
    with torch.no_grad():
        theirs = list(RawOutputs(again.net, names)(images))
        ours = list(RawOutputs(model.net.cpu().eval(), names)(images))
    return compare_outputs(model, names, ours, theirs, tuple(images.shape[-2:]))


def empty_constants_as_computed(graph_proto) -> int:
    """Rewrite every ``Constant`` holding an empty tensor (in ``graph_proto`` and its subgraphs) as
    ``ConstantOfShape``, in place; returns how many. OpenVINO 2026.4's ONNX reader turns an empty Constant
    that an ``If`` branch returns into a scalar 0, so torchvision's NMS guard for "no boxes" (that
    branch) made the end-to-end graph return one phantom detection where there is none."""
    import onnx
    from onnx import helper, numpy_helper

    count = 0
    for node in list(graph_proto.node):
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                count += empty_constants_as_computed(attr.g)
            for sub in attr.graphs:
                count += empty_constants_as_computed(sub)
        value = next((a.t for a in node.attribute if a.name == "value"), None) if node.op_type == "Constant" else None
        if value is None or 0 not in value.dims:
            continue
        empty = numpy_helper.to_array(value)
        shape = helper.make_node("Constant", [], [f"{node.output[0]}__shape"],
                                 value=numpy_helper.from_array(np.array(empty.shape, dtype=np.int64)))
        filled = helper.make_node("ConstantOfShape", [shape.output[0]], [node.output[0]],
                                  value=numpy_helper.from_array(np.zeros(1, dtype=empty.dtype)))
        at = list(graph_proto.node).index(node)
        graph_proto.node.remove(node)
        graph_proto.node.insert(at, filled)
        graph_proto.node.insert(at, shape)
        count += 1
    return count


def onnx_to_openvino(onnx_path: Path, xml_path: Path) -> dict:
    """An ONNX graph -> OpenVINO IR (``model.xml`` + ``model.bin``) with fp32 weights (the IR's default,
    fp16 weights, would shift the outputs that the export check compares)."""
    import onnx
    import openvino as ov

    proto = onnx.load(str(onnx_path))
    rewritten = empty_constants_as_computed(proto.graph)
    with tempfile.TemporaryDirectory(prefix="fourm21_openvino_") as tmp:
        onnx.save(proto, str(Path(tmp) / "model.onnx"))
        ov.save_model(ov.convert_model(str(Path(tmp) / "model.onnx")), str(xml_path), compress_to_fp16=False)
    return {"openvino": ov.__version__.split("-")[0], "empty_constants_rewritten": rewritten}


def export_openvino(model: Fourm21Model, xml_path: Path, img_size: int, opset: int = 18, dynamo: bool = True,
                    end2end: bool = False) -> dict:
    """OpenVINO IR converted from the ONNX graph ``export_onnx`` (or, ``end2end``, ``export_onnx_end2end``)
    writes: the same input ``images`` (B, 3, S, S) with a dynamic batch and the same output names."""
    with tempfile.TemporaryDirectory(prefix="fourm21_openvino_") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        report = export_onnx_end2end(model, onnx_path, img_size, opset) if end2end else \
            {**export_onnx(model, onnx_path, img_size, opset, dynamo), "nms_in_graph": False}
        report.update(onnx_to_openvino(onnx_path, xml_path))
    return report


def verify_openvino(model: Fourm21Model, xml_path: Path, images: torch.Tensor, precision: str = "f32") -> dict:
    """The IR in OpenVINO's CPU plugin at ``precision`` vs PyTorch: raw outputs and kept boxes, or, for an
    end-to-end IR, the checks of ``verify_onnx_end2end``."""
    runner = OpenVinoRunner(xml_path, precision=precision,
                            decoded_keys=[k for task in model.settings.tasks.values() for k in task.decoded_keys])
    got = runner.run(images)
    report: dict[str, Any] = {"openvino_precision": runner.precision}
    if runner.decoded:
        return {**report, **compare_end2end(model, got, images)}
    names = output_names(model.net, images.shape[-1])
    with torch.no_grad():
        ours = list(RawOutputs(model.net.cpu().eval(), names)(images))
    return {**report, **compare_outputs(model, names, ours, [got[n] for n in names], tuple(images.shape[-2:]))}
