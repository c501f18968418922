"""fourm21-export: write a trained model as safetensors, ONNX, a torch.export program or OpenVINO IR, then check it.

    fourm21-export ckpt_path=runs/.../best.ckpt format=onnx
    fourm21-export ckpt_path=runs/.../best.ckpt format=openvino   # IR converted from the ONNX graph
    fourm21-export ckpt_path=runs/.../best.ckpt format=onnx int8=true   # int8, calibrated on training images

Every export is run on a batch next to the PyTorch model; the differences of the raw outputs and
whether decoding gives the same kept boxes go to ``export_report.json`` (an int8 export: how far its decoded
predictions agree with PyTorch's, ``fourm21.export.int8.prediction_agreement``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from fourm21.data.images import list_images
from fourm21.engine.common import CONFIG_DIR, friendly_errors, run_dir_of
from fourm21.errors import ConfigError, DatasetError
from fourm21.export import formats, int8
from fourm21.inference.checkpoints import stored_data_config
from fourm21.inference.loading import load
from fourm21.inference.model import Fourm21Model
from fourm21.inference.raw_outputs import CONSTANT_KEYS


def verification_batch(model, cfg: DictConfig, img_size: int) -> torch.Tensor:
    if cfg.get("verify_source"):
        files = list_images(cfg.verify_source)[: cfg.verify_batch]
        return torch.stack([model.preprocess(f, img_size)[0] for f in files]).float()
    g = torch.Generator().manual_seed(int(cfg.seed))
    return torch.randint(0, 256, (int(cfg.verify_batch), 3, img_size, img_size), generator=g).float()  # noise pixels


def _size_mb(path: Path) -> float:
    files = [path] if path.is_file() else list(path.iterdir())
    return round(sum(f.stat().st_size for f in files) / 2**20, 3)


def calibration_files(cfg: DictConfig) -> list[Path]:
    """The images int8 calibration draws from: ``calibration_source`` (a folder), else the training images of
    the data config the checkpoint stores; a one-line error when there are none."""
    if cfg.calibration_source:
        try:
            return list_images(cfg.calibration_source)
        except DatasetError as e:
            raise DatasetError(f"calibration_source: {e}") from None
    stored = stored_data_config(cfg.ckpt_path) if Path(cfg.ckpt_path).is_file() else None
    if stored is None:
        raise ConfigError(f"int8=true: {cfg.ckpt_path} records no training data to calibrate on; "
                          "give calibration_source=DIR (a folder of training images)")
    with open_dict(cfg):
        cfg.data = OmegaConf.create(dict(stored))
    try:
        datamodule = instantiate(cfg.data.datamodule)
        datamodule.setup("fit")
        files = int8.dataset_image_files(datamodule.train_sets.values())
    except Exception as e:  # noqa: BLE001 - moved or deleted data, whatever the data kind: one line
        raise DatasetError(f"int8=true: the training data of {cfg.ckpt_path} ('{stored.get('name')}') cannot be "
                           f"read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                           "give calibration_source=DIR (a folder of training images)") from None
    if not files:
        raise DatasetError(f"int8=true: no image files in the training data of {cfg.ckpt_path} "
                           f"('{stored.get('name')}'); give calibration_source=DIR (a folder of training images)")
    return files


def predictions(model: Fourm21Model, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """A model's raw outputs by ``task.key`` (none for an end-to-end graph) and its decoded predictions on
    letterboxed ``images``."""
    size = tuple(images.shape[-2:])
    with torch.no_grad():
        out = model.runner(model.network_input(images), None)
    flat = {} if model.runner.decoded else \
        {f"{task}.{key}": t for task, raw in out.items() for key, t in raw.items() if key not in CONSTANT_KEYS}
    return flat, model.decode(out, len(images), size)


def run_int8_export(cfg: DictConfig, model: Fourm21Model, img_size: int, export_dir: Path) -> tuple[dict, Path]:
    """format=onnx|openvino int8=true: the f32 graph, quantised on ``calibration_images`` training images, then
    checked against PyTorch on images never calibrated on (or ``verify_source``)."""
    if cfg.format == "openvino":
        int8.require_nncf()
    calib, held_out = int8.calibration_split(calibration_files(cfg), int(cfg.calibration_images),
                                             int(cfg.verify_batch), int(cfg.seed))
    images = int8.letterboxed(model, calib, img_size)
    check = verification_batch(model, cfg, img_size) if cfg.get("verify_source") else \
        torch.from_numpy(int8.letterboxed(model, held_out, img_size))
    export_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"format": cfg.format}
    with tempfile.TemporaryDirectory(prefix="fourm21_int8_") as tmp:
        f32 = Path(tmp) / "model.onnx"
        report.update(formats.export_onnx_end2end(model, f32, img_size, int(cfg.opset)) if cfg.end2end else
                      {**formats.export_onnx(model, f32, img_size, int(cfg.opset), bool(cfg.dynamo)),
                       "nms_in_graph": False})
        report["f32_size_mb"] = _size_mb(f32)
        if cfg.format == "onnx":
            out = export_dir / "model.onnx"
            report.update(int8.quantize_onnx(f32, out, images, str(cfg.int8_keep_float)))
        else:
            out = export_dir / "model.xml"
            report.update(int8.quantize_openvino(f32, out, images, str(cfg.int8_keep_float)))
    report["int8"]["calibration_source"] = str(cfg.calibration_source or f"the training images of {cfg.ckpt_path}")
    extra = {"int8": {**report["int8"], "float_layers": len(report["int8"]["float_layers"])}}  # names: the report
    if cfg.format == "openvino":
        extra["openvino_precision"] = str(cfg.openvino_precision)
    formats.write_model_card(model, export_dir, img_size, report["output_names"], extra)
    exported = load(export_dir)
    theirs_raw, theirs = predictions(exported, check)
    ours_raw, ours = predictions(model, check)
    report["verify_batch"] = int(check.shape[0])
    report["verify_score_thr"] = float(cfg.verify_score_thr)
    report["agreement"] = int8.prediction_agreement(ours, theirs, float(cfg.verify_score_thr))
    if theirs_raw:
        report["relative_error"] = int8.relative_errors(ours_raw, theirs_raw)
    if cfg.format == "openvino":
        report["openvino_precision"] = exported.runner.precision
    return report, out


def run_export(cfg: DictConfig) -> dict:
    if cfg.format not in formats.FORMATS:
        raise ConfigError(f"format: '{cfg.format}' is not one of {formats.FORMATS}")
    if cfg.format == "openvino" and cfg.openvino_precision not in formats.OPENVINO_PRECISIONS:
        raise ConfigError(f"openvino_precision: '{cfg.openvino_precision}' is not one of {formats.OPENVINO_PRECISIONS}")
    if cfg.int8 and cfg.format not in int8.INT8_FORMATS:
        raise ConfigError(f"int8=true: format={cfg.format} has no int8 export; use format=onnx or format=openvino")
    run_dir = run_dir_of(cfg)
    model = load(cfg.ckpt_path, "cpu")
    img_size = int(cfg.get("img_size") or model.img_size)
    if cfg.int8:
        return finish_int8(cfg, model, img_size, run_dir)
    images = verification_batch(model, cfg, img_size)
    report: dict = {"format": cfg.format, "source": str(cfg.ckpt_path), "img_size": img_size,
                    "verify_batch": int(images.shape[0])}
    export_dir = run_dir / "export"
    if cfg.format == "safetensors":
        out = formats.export_safetensors(model, export_dir)
        report.update(formats.verify_safetensors(model, export_dir, images))
    elif cfg.format == "onnx":
        formats.write_model_card(model, export_dir, img_size, formats.output_names(model.net, img_size))
        out = export_dir / "model.onnx"
        if cfg.end2end:
            report.update(formats.export_onnx_end2end(model, out, img_size, int(cfg.opset)))
            report.update(formats.verify_onnx_end2end(model, out, images))
        else:
            report.update(formats.export_onnx(model, out, img_size, int(cfg.opset), bool(cfg.dynamo)))
            report.update(formats.verify_onnx(model, out, images))
            report["nms_in_graph"] = False
    elif cfg.format == "openvino":
        out = export_dir / "model.xml"
        precision = str(cfg.openvino_precision)
        export_dir.mkdir(parents=True, exist_ok=True)
        report.update(formats.export_openvino(model, out, img_size, int(cfg.opset), bool(cfg.dynamo),
                                              bool(cfg.end2end)))
        formats.write_model_card(model, export_dir, img_size, report["output_names"],
                                 {"openvino_precision": precision})
        report.update(formats.verify_openvino(model, out, images, precision))
    else:
        formats.write_model_card(model, export_dir, img_size, formats.output_names(model.net, img_size))
        out = export_dir / "model.pt2"
        report.update(formats.export_torch(model, out, img_size))
        report.update(formats.verify_torch(model, out, images))
    report["path"] = str(export_dir)
    report["size_mb"] = round(_size_mb(out) + (_size_mb(out.with_suffix(".bin")) if out.suffix == ".xml" else 0.0), 3)
    report["dynamic_batch"] = cfg.format != "safetensors"
    (run_dir / "export_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"exported {cfg.format}: {out} ({report['size_mb']} MB); load it with fourm21.load('{export_dir}')")
    print(f"check on {report['verify_batch']} images: max |diff| of outputs {report['max_abs_diff_all']:.2e}, "
          f"same kept boxes after NMS: {report['same_kept_boxes']}")
    return report


def finish_int8(cfg: DictConfig, model: Fourm21Model, img_size: int, run_dir: Path) -> dict:
    export_dir = run_dir / "export"
    report, out = run_int8_export(cfg, model, img_size, export_dir)
    report.update(source=str(cfg.ckpt_path), img_size=img_size, path=str(export_dir), dynamic_batch=True)
    report["size_mb"] = round(_size_mb(out) + (_size_mb(out.with_suffix(".bin")) if out.suffix == ".xml" else 0.0), 3)
    (run_dir / "export_report.json").write_text(json.dumps(report, indent=2) + "\n")
    agree = report["agreement"]
    print(f"exported {cfg.format} int8: {out} ({report['size_mb']} MB, f32 {report['f32_size_mb']} MB; calibrated on "
          f"{report['int8']['calibration_images']} images); load it with fourm21.load('{export_dir}')")
    masks = f", mask IoU {agree['mask_iou']:.3f}" if "mask_iou" in agree else ""
    rel = f", relative error of outputs <= {max(report['relative_error'].values()):.2e}" \
        if report.get("relative_error") else ""
    print(f"int8 check on {report['verify_batch']} images: detections (score >= {cfg.verify_score_thr}) agree "
          f"{agree['det_agreement']:.3f} (F1 of same-class IoU >= 0.5 matches, {int(agree['det_reference'])} "
          f"reference), box IoU {agree['box_iou']:.3f}{masks}{rel}")
    return report


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
@friendly_errors
def main(cfg: DictConfig) -> None:
    run_export(cfg)


if __name__ == "__main__":
    main()
