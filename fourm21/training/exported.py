"""Score an export (a directory ``fourm21-export`` wrote: ONNX, OpenVINO, .pt2, safetensors; f32 or int8) with
the evaluator and report checkpoints are scored with: ``fourm21-eval ckpt_path=<run>/export``, on the data the
checkpoint it was made from was trained with (``data_from=``, by default the one its export_report.json names)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from fourm21.inference.decode import DecodeSettings
from fourm21.inference.loading import load_exported
from fourm21.inference.model import Fourm21Model
from fourm21.training.module import MultiTaskModule

MODEL_FILES = ("model.onnx", "model.xml", "model.pt2", "model.safetensors")


def export_directory(path: str | Path) -> Path | None:
    """The export directory ``path`` names (the directory, or its model file), None for anything else (a
    checkpoint)."""
    path = Path(path)
    if path.is_file() and path.name in MODEL_FILES and (path.parent / "config.yaml").is_file():
        return path.parent
    return path if path.is_dir() else None


def export_source(directory: Path) -> Path | None:
    """The checkpoint an export was made from, as ``export_report.json`` beside it (``fourm21-export`` writes
    ``<run>/export/`` and ``<run>/export_report.json``) names it; None when that is not there or not a file."""
    report = Path(directory).parent / "export_report.json"
    try:
        source = Path(json.loads(report.read_text())["source"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return source if source.is_file() else None


class ExportedModule(MultiTaskModule):
    """A ``MultiTaskModule`` whose validation runs an exported model (its runner: ONNX Runtime, OpenVINO ...)
    and decodes with the settings its config saved, so ``evaluate_module`` scores it exactly as it scores a
    checkpoint. The PyTorch network it builds from the export's config only describes the heads (their
    classes, groups, thresholds) to the evaluator; its weights are never run. No losses are reported: an
    end-to-end graph has no raw outputs to compute them from."""

    def __init__(self, model: dict, meta: dict) -> None:  # plain configs only: Lightning saves them as hparams
        model = copy.deepcopy(model)
        model.setdefault("backbone", {}).update(pretrained=False, checkpoint=None)  # never fetch weights
        super().__init__(model=model, loss={}, optim={}, meta=meta)
        self.model.requires_grad_(False)
        self.exported: Fourm21Model | None = None

    @classmethod
    def of(cls, exported: Fourm21Model) -> ExportedModule:
        """The module that scores ``exported``; its heads take the values the export saved (tuned multi-label
        thresholds ...)."""
        module = cls(exported.model_config, exported.meta)
        module.exported = exported
        heads = dict(module.model.heads.items())
        for name, values in exported.settings.values.items():
            for key, value in values.items():
                held = getattr(heads.get(name), key, None)
                if isinstance(held, torch.Tensor) and torch.as_tensor(value).shape == held.shape:
                    held.data.copy_(torch.as_tensor(value, dtype=held.dtype))
        return module

    def decode_settings(self, net: Any) -> DecodeSettings:
        return self.exported.settings.with_overrides(**self.decode_overrides)

    def validation_step(self, batch: dict[str, Any] | None, batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch is None:
            return
        images = batch["image"]
        size, settings = tuple(images.shape[-2:]), self.decode_settings(None)
        with torch.no_grad():
            out = self.exported.runner(self.exported.network_input(images), batch.get("caption_tokens"))
        preds = self.exported.decode(out, len(images), size, settings)
        if dataloader_idx < len(self.evaluators):
            self.evaluators[dataloader_idx].update(preds, batch)
        if batch_idx == 0:
            self.last_val_preds[dataloader_idx] = (images[:8].cpu(),
                                                   [{k: v.cpu() for k, v in p.items()} for p in preds[:8]])


def load_export_module(directory: Path) -> ExportedModule:
    return ExportedModule.of(load_exported(directory, "cpu"))
