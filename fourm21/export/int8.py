"""INT8 exports: post-training static quantisation of the exported graph, calibrated on training images.

ONNX (``fourm21-export format=onnx int8=true``): ``onnxruntime.quantization.quantize_static`` in QDQ form,
int8 weights per output channel, uint8 activations (u8s8, ONNX Runtime's fast x86 kernels) from min/max
calibration. OpenVINO (``format=openvino int8=true``): ``nncf.quantize`` on the IR (its CPU preset:
int8 weights per channel, activations per tensor). Both are fed the calibration images exactly as
inference feeds the network: letterboxed by ``Fourm21Model.preprocess``, float pixels 0-255 (the graph
normalises them itself).

What is quantised: the convolutions and matrix products of the network (``QUANTISED_OPS``), with their
inputs; what stays float: everything else (normalisation layers, activations, resizes, additions), the
layers that produce each head's raw output (``head_output_layers``: class logits, box distances, mask
coefficients and prototypes, the semantic logits, where a rounding error is a moved box or a flipped
score) and, in an end-to-end graph, the traced decoder (``network_nodes``: sigmoid, TopK, NMS, mask
assembly). The check (``prediction_agreement``) compares decoded predictions, not raw outputs to 1e-3.
"""

from __future__ import annotations

import random
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fourm21.errors import ConfigError, DatasetError
from fourm21.inference.model import Fourm21Model

INT8_FORMATS = ("onnx", "openvino")
QUANTISED_OPS = ("Conv", "Gemm", "MatMul")  # ONNX op types with weights: where int8 kernels save time
OPENVINO_QUANTISED_OPS = ("Convolution", "GroupConvolution", "MatMul")  # the same, once converted to OpenVINO
KEEP_FLOAT = ("none", "head_outputs")  # int8_keep_float: which of the network's own layers stay float


def calibration_split(files: Sequence[Path], count: int, held_out: int, seed: int = 0
                      ) -> tuple[list[Path], list[Path]]:
    """A seeded draw of ``count`` calibration images from ``files`` and up to ``held_out`` others (the check's
    images, never calibrated on; the calibration images themselves when there are no others)."""
    if count < 1:
        raise ConfigError(f"calibration_images: must be >= 1, got {count}")
    order = list(files)
    random.Random(seed).shuffle(order)
    calib, rest = order[:count], order[count:]
    return calib, (rest or calib)[:held_out]


def letterboxed(model: Fourm21Model, files: Sequence[Path], img_size: int) -> np.ndarray:
    """(N, 3, S, S) float32 pixels 0-255, letterboxed as ``Fourm21Model.predict`` feeds the graph."""
    if not files:
        raise DatasetError("int8: no calibration images")
    return np.stack([model.preprocess(f, img_size)[0].float().numpy() for f in files])


def network_nodes(graph: Any) -> list[Any]:
    """The nodes of the network itself: all of a raw graph; in an end-to-end graph (TorchScript export of
    ``EndToEnd``, node names ``/net/...``) not the traced decoder after it."""
    nodes = list(graph.node)
    scoped = [n for n in nodes if n.name.startswith("/net/")]
    return scoped or nodes


def head_output_layers(graph: Any) -> list[str]:
    """The last weighted layer (``QUANTISED_OPS``) on the way to each tensor the network hands on (a graph
    output, or in an end-to-end graph what its decoder reads): one conv / linear per head output."""
    net = network_nodes(graph)
    names = {n.name for n in net}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in graph.output}
    handed_on = [o for n in net for o in n.output
                 if o in outputs or any(c.name not in names for c in consumers.get(o, []))]
    found: list[str] = []
    stack, seen = list(handed_on), set()
    while stack:
        tensor = stack.pop()
        node = producer.get(tensor)
        if tensor in seen or node is None or node.name not in names or node.op_type == "Shape":
            continue  # (a shape carries none of its input's values)
        seen.add(tensor)
        if node.op_type in QUANTISED_OPS:
            found.append(node.name)
            continue
        stack.extend(node.input)
    return sorted(set(found))


def float_nodes(graph: Any, keep_float: str) -> list[str]:
    """Names of the nodes to leave unquantised: the decoder of an end-to-end graph, and with
    ``keep_float=head_outputs`` the heads' output layers."""
    if keep_float not in KEEP_FLOAT:
        raise ConfigError(f"int8_keep_float: '{keep_float}' is not one of {KEEP_FLOAT}")
    net = {n.name for n in network_nodes(graph)}
    out = [n.name for n in graph.node if n.name not in net]
    if keep_float == "head_outputs":
        out += head_output_layers(graph)
    return out


def _batches(images: np.ndarray) -> Iterator[dict[str, np.ndarray]]:
    for i in range(len(images)):
        yield {"images": images[i:i + 1]}


def quantize_onnx(f32_path: Path, out_path: Path, images: np.ndarray, keep_float: str) -> dict:
    """``f32_path`` -> a QDQ int8 ONNX graph at ``out_path``, calibrated on ``images`` (N, 3, S, S), one at a time."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = _batches(images)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(prefix="fourm21_int8_") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:  # shape inference + constant folding, as ONNX Runtime advises before quantising
            quant_pre_process(str(f32_path), str(prepared))
        except Exception:  # noqa: BLE001 - an end-to-end graph's shapes may defeat it; quantise the graph as it is
            prepared = f32_path
        graph = onnx.load(str(prepared)).graph
        keep = float_nodes(graph, keep_float)
        quantize_static(str(prepared), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=list(QUANTISED_OPS), nodes_to_exclude=keep,
                        calibrate_method=CalibrationMethod.MinMax)
    quantised = sum(n.op_type in QUANTISED_OPS for n in graph.node) - sum(
        n.op_type in QUANTISED_OPS for n in graph.node if n.name in set(keep))
    return {"int8": {"method": "onnxruntime quantize_static (QDQ, per-channel int8 weights, uint8 activations, "
                               "min/max calibration)",
                     "calibration_images": int(len(images)), "keep_float": keep_float,
                     "quantised_layers": int(quantised), "float_layers": head_output_layers(graph)
                     if keep_float == "head_outputs" else []}}


def require_nncf() -> None:
    """A one-line ConfigError when NNCF (the optional extra ``fourm21[int8]``) is not installed."""
    import importlib.util

    if importlib.util.find_spec("nncf") is None:
        raise ConfigError("format=openvino int8=true needs NNCF: pip install 'fourm21[int8]' (or use format=onnx "
                          "int8=true, which needs only onnxruntime)")


def quantize_openvino(f32_onnx: Path, xml_path: Path, images: np.ndarray, keep_float: str) -> dict:
    """The f32 ONNX graph -> an int8 OpenVINO IR at ``xml_path`` by NNCF, calibrated on ``images``."""
    require_nncf()
    import nncf
    import onnx
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    from fourm21.export.formats import empty_constants_as_computed

    proto = onnx.load(str(f32_onnx))
    rewritten = empty_constants_as_computed(proto.graph)
    keep = float_nodes(proto.graph, keep_float)
    with tempfile.TemporaryDirectory(prefix="fourm21_int8_") as tmp:
        onnx.save(proto, str(Path(tmp) / "model.onnx"))
        ir = ov.convert_model(str(Path(tmp) / "model.onnx"))
    # OpenVINO names each operation after its ONNX node (a converted node may add a suffix: ``name/...``); the
    # operations without weights are left alone, as in the ONNX path: quantising their inputs too (NNCF's default)
    # gave 1.5-2x the error on the lite model and no speed
    patterns = [f"^{re.escape(name)}(/.*)?$" for name in keep]
    unweighted = sorted({op.get_type_name() for op in ir.get_ordered_ops()}
                        - {*OPENVINO_QUANTISED_OPS, "Parameter", "Result", "Constant"})
    scope = nncf.IgnoredScope(patterns=patterns, types=unweighted, validate=False)
    dataset = nncf.Dataset(list(_batches(images)), lambda item: item["images"])
    # activation ranges from the min / max over all calibration images, as ONNX Runtime's MinMax (NNCF's default,
    # the mean of the per-image extremes, clipped more: 2-4x the error of some head outputs on the lite model); no
    # bias correction, as in the ONNX path (on the lite model: the same error, a third less time)
    advanced = AdvancedQuantizationParameters(activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX,
                                              disable_bias_correction=True)
    quantised = nncf.quantize(ir, dataset, subset_size=len(images), ignored_scope=scope,
                              preset=nncf.QuantizationPreset.MIXED, target_device=nncf.TargetDevice.CPU,
                              advanced_parameters=advanced)
    ov.save_model(quantised, str(xml_path), compress_to_fp16=False)
    fq = sum(op.get_type_name() == "FakeQuantize" for op in quantised.get_ordered_ops())
    return {"openvino": ov.__version__.split("-")[0], "empty_constants_rewritten": rewritten,
            "int8": {"method": f"nncf {nncf.__version__} quantize (CPU, mixed preset: per-channel int8 weights, "
                               "asymmetric int8 activations, min/max calibration, no bias correction)",
                     "calibration_images": int(len(images)), "keep_float": keep_float,
                     "fake_quantize_ops": int(fq),
                     "float_layers": head_output_layers(proto.graph) if keep_float == "head_outputs" else []}}


def _greedy_matches(iou: torch.Tensor) -> list[tuple[int, int]]:
    """Pairs (reference, candidate) taken by descending IoU, each side at most once."""
    pairs, iou = [], iou.clone()
    while iou.numel() and float(iou.max()) > 0:
        flat = int(iou.argmax())
        i, j = divmod(flat, iou.shape[1])
        pairs.append((i, j))
        iou[i, :], iou[:, j] = 0, 0
    return pairs


def prediction_agreement(ref: Sequence[dict], got: Sequence[dict], score_thr: float, iou_thr: float = 0.5
                         ) -> dict[str, float]:
    """How far two models' decoded predictions (``decode``'s per-image dicts, the same images) agree:
    ``det_agreement``, the F1 of matching the detections scoring >= ``score_thr`` (same class, box IoU >=
    ``iou_thr``; 1.0 when neither has any), ``box_iou`` and ``mask_iou``, the mean IoU of the matched pairs,
    ``score_diff``, their largest score difference, ``det_reference``, how many reference detections were
    compared, and ``<key>_agree`` for each integer prediction (class, semantic map, attributes): the share
    of equal values."""
    from torchvision.ops import box_iou

    matched = n_ref = n_got = 0
    ious, mask_ious, score_diff = [], [], 0.0
    agree: dict[str, list[float]] = {}
    for a, b in zip(ref, got):
        if "boxes" in a and "boxes" in b:
            ka, kb = a["scores"] >= score_thr, b["scores"] >= score_thr
            n_ref, n_got = n_ref + int(ka.sum()), n_got + int(kb.sum())
            ia, ib = ka.nonzero().flatten(), kb.nonzero().flatten()
            if len(ia) and len(ib):
                iou = box_iou(a["boxes"][ia].float(), b["boxes"][ib].float())
                iou = iou * (a["labels"][ia, None] == b["labels"][None, ib]) * (iou >= iou_thr)
                for i, j in _greedy_matches(iou):
                    matched += 1
                    ious.append(float(iou[i, j]))
                    score_diff = max(score_diff, abs(float(a["scores"][ia[i]]) - float(b["scores"][ib[j]])))
                    if "masks" in a and "masks" in b:
                        ma, mb = a["masks"][ia[i]], b["masks"][ib[j]]
                        union = float((ma | mb).sum())
                        mask_ious.append(float((ma & mb).sum()) / union if union else 1.0)
        for key, value in a.items():
            if key in ("labels", "locations", "class_topk") or key not in b or value.is_floating_point() \
                    or value.dtype == torch.bool or value.shape != b[key].shape:
                continue
            agree.setdefault(key, []).append(float((value == b[key]).float().mean()))
    out = {"det_agreement": 2 * matched / (n_ref + n_got) if n_ref + n_got else 1.0,
           "det_reference": float(n_ref), "det_int8": float(n_got),
           "box_iou": float(np.mean(ious)) if ious else 1.0, "score_diff": score_diff}
    if mask_ious:
        out["mask_iou"] = float(np.mean(mask_ious))
    out.update({f"{k.replace('.', '_')}_agree": float(np.mean(v)) for k, v in agree.items()})
    return out


def relative_errors(ours: Mapping[str, torch.Tensor], theirs: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Each raw output's relative error, ``||int8 - f32|| / ||f32||`` (L2 over the batch)."""
    return {n: float((theirs[n].float() - a.float()).norm() / a.float().norm().clamp_min(1e-12))
            for n, a in ours.items() if n in theirs}


def dataset_image_files(datasets: Iterable[Any]) -> list[Path]:
    """The image files of data sets (through ConcatDataset, Subset and wrappers): a COCO-style set's
    ``img_dir`` / file names, an image folder's ``files``; in order, each once."""
    files: dict[Path, None] = {}
    stack, seen = list(datasets), set()
    while stack:
        ds = stack.pop(0)
        if id(ds) in seen:
            continue
        seen.add(id(ds))
        stack.extend(getattr(ds, "datasets", []) or [])
        if getattr(ds, "dataset", None) is not None:
            stack.append(ds.dataset)
        if getattr(ds, "coco", None) is not None and hasattr(ds, "img_dir") and hasattr(ds, "ids"):
            files.update((Path(ds.img_dir) / ds.coco.imgs[i]["file_name"], None) for i in ds.ids)
        elif isinstance(getattr(ds, "files", None), list):
            files.update((Path(f), None) for f in ds.files)
    return list(files)
