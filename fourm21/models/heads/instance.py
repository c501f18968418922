"""Instance masks from shared prototypes and per-location coefficients (YOLACT / YOLOv8-seg style).

Only the kept detections' masks are assembled, each inside its box (``paste_masks``), so the cost
after NMS is small.
"""

from __future__ import annotations

import torch
from torch import nn

from fourm21.models.heads.base import Head
from fourm21.models.neck import SharedTower, conv_norm_act


class InstanceMaskHead(Head):
    """Prototypes (B, K, 2H/s0, 2W/s0) from the finest level s0; coefficients (B, L, K) on the detection levels."""


    def __init__(self, in_channels: int, strides: list[int], num_protos: int = 16,
                 proto_channels: int = 64, num_convs: int = 1, mask_thr: float = 0.5, max_pos: int = 512,
                 dice_weight: float = 1.0, separable: bool = False, pred_kernel: int = 3,
                 norm: str = "group") -> None:
        super().__init__()
        self.strides = list(strides)  # levels for coefficients: must equal the detection head's
        self.mask_thr, self.max_pos, self.dice_weight = mask_thr, max_pos, dice_weight
        sep = separable
        self.proto_net = nn.Sequential(
            conv_norm_act(in_channels, proto_channels, separable=sep, norm=norm),
            nn.Upsample(scale_factor=2, mode="nearest"),
            conv_norm_act(proto_channels, proto_channels, separable=sep, norm=norm),
            nn.Conv2d(proto_channels, num_protos, 1))
        self.coef_tower = SharedTower(in_channels, num_convs, len(self.strides), separable, norm)
        self.coef_pred = nn.Conv2d(in_channels, num_protos, pred_kernel, padding=pred_kernel // 2)

    def forward(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """feats at ``strides`` -> proto (B, K, Hp, Wp), coefs (B, L, K)."""
        coefs = [self.coef_pred(self.coef_tower(f, i)).flatten(2).transpose(1, 2) for i, f in enumerate(feats)]
        return {"proto": self.proto_net(feats[0]), "coefs": torch.tanh(torch.cat(coefs, 1))}
