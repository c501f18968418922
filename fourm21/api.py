"""The Python API: ``model = fourm21.load(path)``; ``model.predict(images)``; ``model.predict_video(path)``;
``fourm21.save_pretrained(model, dir)``; ``fourm21.push_to_hub(model, "owner/name")``;
``to_supervision(pred, model)`` / ``to_supervision_keypoints(pred, model)`` for roboflow ``supervision``.

``path`` is a Lightning checkpoint (``.ckpt``, read with ``weights_only=True``), a directory written
by ``fourm21-export`` or ``save_pretrained`` (safetensors: no pickle, no Lightning; ONNX: run by ONNX Runtime;
torch.export: a ``.pt2`` program), or a model on the Hugging Face Hub (``hf://owner/name[@revision]``).
Predictions are plain dicts of tensors per image, in the original image's pixels, decoded by
``fourm21.inference.decode`` whatever ran the network. This module is the face; the work is in
``fourm21.inference`` and ``fourm21.hub``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fourm21.hub import download, is_hub_uri, push_to_hub, save_pretrained
from fourm21.inference import loading
from fourm21.inference.model import Fourm21Model, FramePrediction, VideoPredictions
from fourm21.inference.preprocess import ImageLike
from fourm21.inference.supervision import to_detections, to_keypoints

if TYPE_CHECKING:
    import supervision as sv

__all__ = ["FramePrediction", "Fourm21Model", "ImageLike", "VideoPredictions", "load", "push_to_hub",
           "save_pretrained", "to_supervision", "to_supervision_keypoints"]


def load(path: str | Path, device: str | torch.device = "cpu") -> Fourm21Model:
    """Load a ``.ckpt``, an export / ``save_pretrained`` directory or ``hf://owner/name[@revision]`` (downloaded
    once into the Hugging Face cache) for inference."""
    if is_hub_uri(path):
        path = download(path)
    return loading.load(path, device)


def to_supervision(pred: Mapping[str, torch.Tensor], model: Fourm21Model) -> sv.Detections:
    """One image's predictions (an entry of ``model.predict(...)``, or a video frame's ``pred``) as
    ``supervision.Detections`` in original pixels: boxes, masks, class ids (indexes into ``model.class_names``),
    scores, track ids, ``data["class_name"]``, ``data["keypoints"]``; the image class etc. in ``metadata``.
    Needs ``pip install "fourm21[supervision]"``."""
    return to_detections(pred, model.meta, model.settings)


def to_supervision_keypoints(pred: Mapping[str, torch.Tensor], model: Fourm21Model) -> sv.KeyPoints:
    """One image's keypoints (a model with a keypoint head) as ``supervision.KeyPoints``, for its vertex and
    edge annotators."""
    return to_keypoints(pred, model.meta)
