"""The Python API: ``model = fourm21.load(path)``; ``model.predict(images)``; ``model.predict_video(path)``;
``fourm21.save_pretrained(model, dir)``; ``fourm21.push_to_hub(model, "owner/name")``.

``path`` is a Lightning checkpoint (``.ckpt``, read with ``weights_only=True``), a directory written
by ``fourm21-export`` or ``save_pretrained`` (safetensors: no pickle, no Lightning; ONNX: run by ONNX Runtime;
torch.export: a ``.pt2`` program), or a model on the Hugging Face Hub (``hf://owner/name[@revision]``).
Predictions are plain dicts of tensors per image, in the original image's pixels, decoded by
``fourm21.inference.decode`` whatever ran the network. This module is the face; the work is in
``fourm21.inference`` and ``fourm21.hub``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fourm21.hub import download, is_hub_uri, push_to_hub, save_pretrained
from fourm21.inference import loading
from fourm21.inference.model import Fourm21Model, FramePrediction, VideoPredictions
from fourm21.inference.preprocess import ImageLike

__all__ = ["FramePrediction", "Fourm21Model", "ImageLike", "VideoPredictions", "load", "push_to_hub",
           "save_pretrained"]


def load(path: str | Path, device: str | torch.device = "cpu") -> Fourm21Model:
    """Load a ``.ckpt``, an export / ``save_pretrained`` directory or ``hf://owner/name[@revision]`` (downloaded
    once into the Hugging Face cache) for inference."""
    if is_hub_uri(path):
        path = download(path)
    return loading.load(path, device)
