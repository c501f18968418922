"""An end-to-end graph for export: the network followed by ``fourm21.inference.decode.decode_batch``.

The graph is traced from the one decoder (no second copy): its outputs are ``decode_batch``'s, with the
detections of the whole batch as one list with an image index (as torchvision's and ultralytics'
exported detectors do): ``det_batch_index`` (K,), ``det_boxes`` (K, 4) xyxy in input pixels,
``det_scores`` (K,), ``det_labels`` (K,), ``det_mask_logits`` (K, Hp, Wp) at prototype resolution
(``split_images`` pastes them), ``cls_probs`` (B, K), ``sem_labels`` (B, H, W). The decode settings
(``score_thr``, NMS ``iou_thr``, ``max_det`` per image, the semantic ``label_stride``) are fixed at export.
"""

from __future__ import annotations

import torch
from torch import nn

from fourm21.errors import ConfigError
from fourm21.inference.decode import DecodeSettings, decode_batch
from fourm21.models.multitask import MultiTaskNet

END2END_OUTPUTS = ("det_batch_index", "det_boxes", "det_scores", "det_labels", "det_mask_logits", "cls_probs",
                   "sem_labels")


class EndToEnd(nn.Module):
    def __init__(self, net: MultiTaskNet, settings: DecodeSettings | None = None) -> None:
        super().__init__()
        self.net = net
        self.settings = settings or DecodeSettings.from_net(net)
        kinds = set(self.settings.heads.values())
        if "det" not in kinds:
            raise ConfigError("export end2end=true: the model has no detection head (export end2end=false)")
        self.names = [n for n in END2END_OUTPUTS
                      if not (n == "det_mask_logits" and "inst" not in kinds)
                      and not (n == "cls_probs" and "cls" not in kinds)
                      and not (n == "sem_labels" and "sem" not in kinds)]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = decode_batch(self.net(images), tuple(images.shape[-2:]), self.settings)
        return tuple(out[n] for n in self.names)
