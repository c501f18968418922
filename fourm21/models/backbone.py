"""timm backbones as multi-scale feature extractors.

Any timm model with ``features_only`` works. Plain ViTs have a single stride-16 (or patch-size)
map; for them a ViTDet-style simple feature pyramid builds strides 4-32 from the last block.
"""

from __future__ import annotations

import math
from pathlib import Path

import timm
import torch
from torch import nn

from fourm21.errors import CheckpointError, ConfigError


class SimplePyramid(nn.Module):
    """ViTDet simple feature pyramid: one (B, C, H/p, W/p) map -> maps at ``out_strides`` (default 4-32).

    Finer strides come from 2x transposed convolutions, coarser ones from max pooling, so heads
    see the same strides whatever the patch size.
    """

    def __init__(self, channels: int, stride: int, out_strides: tuple[int, ...] = (4, 8, 16, 32)) -> None:
        super().__init__()
        self.strides = list(out_strides)
        self.channels = []
        self.levels = nn.ModuleList()
        for t in self.strides:
            if t < stride:
                steps, c, layers = int(math.log2(stride // t)), channels, []
                for k in range(steps):
                    c_out = max(channels // 2 ** (k + 1), 16)
                    layers += [nn.ConvTranspose2d(c, c_out, 2, 2)]
                    if k < steps - 1:
                        layers += [nn.GroupNorm(1, c_out), nn.GELU()]
                    c = c_out
                self.levels.append(nn.Sequential(*layers))
                self.channels.append(c)
            elif t == stride:
                self.levels.append(nn.Identity())
                self.channels.append(channels)
            else:
                self.levels.append(nn.MaxPool2d(t // stride, t // stride))
                self.channels.append(channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [level(x) for level in self.levels]


class TimmBackbone(nn.Module):
    """Wraps ``timm.create_model(features_only=True)``; exposes ``channels`` and ``strides`` per level.

    ``checkpoint`` loads a local timm state dict (``.safetensors`` or ``.pth``) for offline use.
    """

    def __init__(self, name: str = "convnext_atto", pretrained: bool = False, checkpoint: str | None = None,
                 out_indices: tuple[int, ...] | None = None, img_size: int | None = None,
                 drop_path_rate: float = 0.0, **kwargs) -> None:
        super().__init__()
        self.name = name
        self.is_vit = "vit" in name or "deit" in name
        if self.is_vit and img_size is not None:
            kwargs.setdefault("img_size", img_size)
            kwargs.setdefault("dynamic_img_size", True)
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
        elif self.is_vit:
            kwargs["out_indices"] = (-1,)
        try:
            self.body = timm.create_model(name, pretrained=pretrained, features_only=True,
                                          drop_path_rate=drop_path_rate, **kwargs)
        except RuntimeError as e:
            if "Unknown model" in str(e):
                raise ConfigError(f"model.backbone.name: timm has no model '{name}'") from None
            if not pretrained:
                raise
            raise CheckpointError(f"backbone '{name}': pretrained weights unavailable ({str(e).splitlines()[0]}); "
                                  f"give a local file with model.backbone.checkpoint=PATH") from None
        except OSError as e:  # no network, no cached hub file
            if not pretrained:
                raise
            raise CheckpointError(f"backbone '{name}': cannot download pretrained weights "
                                  f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); give a local file with "
                                  f"model.backbone.checkpoint=PATH") from None
        channels = list(self.body.feature_info.channels())
        strides = list(self.body.feature_info.reduction())
        self.pyramid: SimplePyramid | None = None
        if self.is_vit:
            self.pyramid = SimplePyramid(channels[-1], strides[-1])
            channels, strides = self.pyramid.channels, self.pyramid.strides
        self.channels: list[int] = channels
        self.strides: list[int] = strides
        if checkpoint:
            self.load_checkpoint(checkpoint)

    def load_checkpoint(self, path: str) -> None:
        """Load backbone weights from a local file (timm naming, with or without a classifier)."""
        file = Path(path)
        if not file.is_file():
            raise CheckpointError(f"backbone '{self.name}': checkpoint file not found: {file}")
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state.get("model", state))
        missing, unexpected = self.body.load_state_dict(state, strict=False)
        if len(missing) == len(self.body.state_dict()):
            raise CheckpointError(f"backbone '{self.name}': no tensor in {file} matches the model's parameters")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> list of (B, C_i, H/s_i, W/s_i), finest first."""
        feats = self.body(x)
        if self.pyramid is not None:
            feats = self.pyramid(feats[-1])
        return list(feats)
