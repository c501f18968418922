"""One loader for every kind of trained model: a ``.ckpt`` or a directory written by ``fourm21-export``.

An export directory holds config.yaml (model config + inference meta, with the decode settings' tuned
values and the graph's output names), classes.json, and one of model.safetensors (rebuilt exactly in
PyTorch, no pickle), model.onnx (ONNX Runtime), model.pt2 (a torch.export program) or model.xml + model.bin
(OpenVINO IR, run by OpenVINO's CPU plugin at the config's ``openvino_precision``). ONNX, .pt2 and OpenVINO
run without a PyTorch network: decoding reads its settings from the config.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fourm21.errors import CheckpointError
from fourm21.inference.checkpoints import load_checkpoint, load_state
from fourm21.inference.decode import DecodeSettings
from fourm21.inference.model import Fourm21Model
from fourm21.inference.runners import ExportedProgramRunner, OnnxRunner, OpenVinoRunner
from fourm21.models.multitask import build_model


def load(path: str | Path, device: str | torch.device = "cpu") -> Fourm21Model:
    """Load a ``.ckpt`` or an export directory for inference."""
    path = Path(path)
    if path.is_dir():
        return load_exported(path, device)
    net, hp = load_checkpoint(path)
    return Fourm21Model.from_net(net, hp["model"], hp.get("meta") or {}, device)


def load_exported(directory: Path, device: str | torch.device = "cpu") -> Fourm21Model:
    """A directory from ``fourm21-export`` (see the module docstring)."""
    from omegaconf import OmegaConf

    config = directory / "config.yaml"
    if not config.is_file():
        raise CheckpointError(f"exported model directory {directory} lacks config.yaml")
    cfg = OmegaConf.to_container(OmegaConf.load(config), resolve=True)
    model_cfg, meta = cfg["model"], dict(cfg.get("meta") or {})
    classes = directory / "classes.json"
    if classes.is_file():
        meta.update(json.loads(classes.read_text()))
    if (directory / "model.safetensors").is_file():
        from safetensors.torch import load_file

        net = build_model(model_cfg)
        load_state(net, load_file(str(directory / "model.safetensors")), directory / "model.safetensors")
        return Fourm21Model.from_net(net, model_cfg, meta, device)
    settings = DecodeSettings.from_config(model_cfg, meta.get("decode"), meta)
    decoded_keys = [k for task in settings.tasks.values() for k in task.decoded_keys]
    if (directory / "model.onnx").is_file():
        runner = OnnxRunner(directory / "model.onnx", device, decoded_keys)
    elif (directory / "model.pt2").is_file():
        if not meta.get("output_names"):
            raise CheckpointError(f"{directory / 'config.yaml'}: meta.output_names is missing (export it again)")
        runner = ExportedProgramRunner(directory / "model.pt2", meta["output_names"], device)
    elif (directory / "model.xml").is_file():
        runner = OpenVinoRunner(directory / "model.xml", meta.get("output_names"),
                                str(meta.get("openvino_precision") or "f32"), decoded_keys=decoded_keys)
    else:
        raise CheckpointError(f"exported model directory {directory} lacks model.safetensors, model.onnx, "
                              "model.pt2 or model.xml")
    return Fourm21Model(runner, model_cfg, meta, settings, None, device)
