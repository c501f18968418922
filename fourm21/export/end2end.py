"""An end-to-end graph for export: the network followed by ``fourm21.inference.decode.decode_batch``.

The graph is traced from the one decoder (no second copy): its outputs are ``decode_batch``'s, each task's
``decoded_keys`` (for the built-in tasks: the detections of the whole batch as one list with an image index,
as torchvision's and ultralytics' exported detectors do: ``det_batch_index`` (K,), ``det_boxes`` (K, 4) xyxy
in input pixels, ``det_scores``, ``det_labels``, ``det_mask_logits`` (K, Hp, Wp) at prototype resolution,
and the image-level ``cls_probs`` (B, K), ``sem_labels`` (B, H, W), ``mlc_probs`` ...). The decode settings
(score and NMS thresholds, ``max_det`` per image, the semantic ``label_stride``) are fixed at export.
"""

from __future__ import annotations

import torch
from torch import nn

from fourm21.errors import ConfigError
from fourm21.inference.decode import DecodeSettings, decode_batch
from fourm21.models.multitask import MultiTaskNet


class EndToEnd(nn.Module):
    def __init__(self, net: MultiTaskNet, settings: DecodeSettings | None = None) -> None:
        super().__init__()
        self.net = net
        self.settings = settings or DecodeSettings.from_net(net)
        keys = [k for task in self.settings.tasks.values() for k in task.decoded_keys]
        self.flat = {k for task in self.settings.tasks.values() for k in task.flat_keys}
        self.names = [k for k in keys if k in self.flat] + [k for k in keys if k not in self.flat]  # detections first
        if not self.flat:
            raise ConfigError("export end2end=true: the model has no detection head, which the end-to-end graph "
                              "is for (export end2end=false)")

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """The batch axis of the input and of each image-level output, the detections axis of the flat ones."""
        return {"images": {0: "batch"}, **{n: {0: "detections" if n in self.flat else "batch"} for n in self.names}}

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = decode_batch(self.net(images), tuple(images.shape[-2:]), self.settings)
        return tuple(out[n] for n in self.names)
