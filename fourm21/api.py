"""The Python API: ``model = fourm21.load(path)``; ``model.predict(images)``; ``model.predict_video(path)``.

``path`` is a Lightning checkpoint (``.ckpt``, read with ``weights_only=True``) or a directory written
by ``fourm21-export`` (safetensors: no pickle, no Lightning; ONNX: run by ONNX Runtime; torch.export: a
``.pt2`` program). Predictions are plain dicts of tensors per image, in the original image's pixels,
decoded by ``fourm21.inference.decode`` whatever ran the network. This module is the face; the work is
in ``fourm21.inference``.
"""

from __future__ import annotations

from fourm21.inference.loading import load
from fourm21.inference.model import Fourm21Model, FramePrediction, VideoPredictions
from fourm21.inference.preprocess import ImageLike

__all__ = ["FramePrediction", "Fourm21Model", "ImageLike", "VideoPredictions", "load"]
