"""fourm21-export: write a trained model as safetensors, ONNX, a torch.export program or OpenVINO IR, then check it.

    fourm21-export ckpt_path=runs/.../best.ckpt format=onnx
    fourm21-export ckpt_path=runs/.../best.ckpt format=openvino   # IR converted from the ONNX graph

Every export is run on a batch next to the PyTorch model; the differences of the raw outputs and
whether decoding gives the same kept boxes go to ``export_report.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from fourm21.data.images import list_images
from fourm21.engine.common import CONFIG_DIR, friendly_errors, run_dir_of
from fourm21.errors import ConfigError
from fourm21.export import formats
from fourm21.inference.loading import load


def verification_batch(model, cfg: DictConfig, img_size: int) -> torch.Tensor:
    if cfg.get("verify_source"):
        files = list_images(cfg.verify_source)[: cfg.verify_batch]
        return torch.stack([model.preprocess(f, img_size)[0] for f in files]).float()
    g = torch.Generator().manual_seed(int(cfg.seed))
    return torch.randint(0, 256, (int(cfg.verify_batch), 3, img_size, img_size), generator=g).float()  # noise pixels


def _size_mb(path: Path) -> float:
    files = [path] if path.is_file() else list(path.iterdir())
    return round(sum(f.stat().st_size for f in files) / 2**20, 3)


def run_export(cfg: DictConfig) -> dict:
    if cfg.format not in formats.FORMATS:
        raise ConfigError(f"format: '{cfg.format}' is not one of {formats.FORMATS}")
    if cfg.format == "openvino" and cfg.openvino_precision not in formats.OPENVINO_PRECISIONS:
        raise ConfigError(f"openvino_precision: '{cfg.openvino_precision}' is not one of {formats.OPENVINO_PRECISIONS}")
    run_dir = run_dir_of(cfg)
    model = load(cfg.ckpt_path, "cpu")
    img_size = int(cfg.get("img_size") or model.img_size)
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


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
@friendly_errors
def main(cfg: DictConfig) -> None:
    run_export(cfg)


if __name__ == "__main__":
    main()
