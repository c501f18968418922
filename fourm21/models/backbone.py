"""timm backbones as multi-scale feature extractors.

Any timm model with ``features_only`` works, chosen by what it reports, never by its name: a model
whose features all share one stride (a plain ViT: stride 16 or the patch size) gets a ViTDet-style
simple feature pyramid (strides 4-32) from its last block; features timm hands over channels-last
(``output_fmt`` NHWC: Swin and other hierarchical transformers) are turned channels-first for the neck.
The keywords fourm21 passes for the input size and stochastic depth (``img_size``, ``dynamic_img_size``,
``drop_path_rate``) go only to models that take them; a model that still cannot be built or run as a
feature extractor stops with a ConfigError naming it and why.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import timm
import torch
from torch import nn

from fourm21.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)


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


# The one statement of what the network takes; training, the letterbox, every runner and export follow it.
INPUT_CONTRACT = ("images (B, 3, H, W), RGB, pixel values 0-255 (uint8, or float of the same scale); the network "
                  "normalises them with its own mean and std")


def _channels_first_input(module: nn.Module, args: tuple) -> tuple:
    return tuple(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args)


def _pixel_convs_channels_first(body: nn.Module) -> None:
    """Run the strided 1x1 convolutions over the RGB pixels (MobileOne-style stem branches: FastViT, MobileOne)
    channels-first. Their weight gradient in channels-last corrupts the heap on AMD Zen 4 CPUs (oneDNN in
    torch 2.14.1: glibc aborts the process); over 3 channels the layout change costs nothing measurable."""
    for m in body.modules():
        if isinstance(m, nn.Conv2d) and m.in_channels <= 4 and m.kernel_size == (1, 1) and max(m.stride) > 1:
            m.register_forward_pre_hook(_channels_first_input)


class TimmBackbone(nn.Module):
    """Wraps ``timm.create_model(features_only=True)``; exposes ``channels`` and ``strides`` per level.

    ``checkpoint`` loads a local timm state dict (``.safetensors`` or ``.pth``) for offline use. The network's
    input normalisation is the backbone's: ``mean`` / ``std`` (0-1 scale, RGB) as the config sets them, else
    the statistics timm's data config gives for this model (ImageNet's for most, CLIP's for CLIP ViTs ...),
    held as buffers so they follow the network to its device and into every export (``INPUT_CONTRACT``).
    """

    def __init__(self, name: str = "convnext_atto", pretrained: bool = False, checkpoint: str | None = None,
                 out_indices: tuple[int, ...] | None = None, img_size: int | None = None,
                 drop_path_rate: float = 0.0, mean: list[float] | None = None, std: list[float] | None = None,
                 **kwargs) -> None:
        super().__init__()
        self.name = name
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
        optional: dict = {"drop_path_rate": drop_path_rate}
        if img_size is not None:  # position embeddings / attention windows sized for the input, where a model has them
            optional.update(img_size=img_size, dynamic_img_size=True)
        self.body = self._create(pretrained, kwargs, optional)
        _pixel_convs_channels_first(self.body)
        fmt = getattr(self.body, "output_fmt", "NCHW")  # timm's Format enum, or absent (channels-first)
        self.nhwc = getattr(fmt, "value", fmt) == "NHWC"
        channels = list(self.body.feature_info.channels())
        strides = list(self.body.feature_info.reduction())
        self.pyramid: SimplePyramid | None = None
        if len(set(strides)) == 1:  # one stride for every level: a plain ViT
            self.pyramid = SimplePyramid(channels[-1], strides[-1])
            channels, strides = self.pyramid.channels, self.pyramid.strides
        self.is_vit = self.pyramid is not None
        self.channels: list[int] = channels
        self.strides: list[int] = strides
        if checkpoint:
            self.load_checkpoint(checkpoint)
        data_cfg = timm.data.resolve_model_data_config(self.body)
        self.mean = tuple(float(v) for v in (mean if mean is not None else data_cfg["mean"]))
        self.std = tuple(float(v) for v in (std if std is not None else data_cfg["std"]))
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"model.backbone.mean / std: three values each, std > 0, got {self.mean} / {self.std}")
        # pixel scale, (3, 1, 1); not in the state dict: the config (or timm) defines them, old checkpoints load
        self.register_buffer("pixel_mean", torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1) * 255.0,
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1) * 255.0,
                             persistent=False)

    def _create(self, pretrained: bool, kwargs: dict, optional: dict) -> nn.Module:
        """``timm.create_model(features_only=True)``, leaving out the ``optional`` keywords the model rejects."""
        name, optional = self.name, dict(optional)
        while True:
            try:
                return timm.create_model(name, pretrained=pretrained, features_only=True, **kwargs, **optional)
            except AssertionError as e:  # a default out_indices beyond a shallow model (a 2-block ViT): its last one
                if "out of range" not in str(e) or "out_indices" in kwargs:
                    raise ConfigError(f"model.backbone.name: timm's '{name}' cannot be built as a feature "
                                      f"extractor ({_first_line(e)})") from None
                kwargs = {**kwargs, "out_indices": (-1,)}
            except TypeError as e:
                bad = re.search(r"unexpected keyword argument '(\w+)'", str(e))
                if bad and bad.group(1) in optional:
                    dropped = optional.pop(bad.group(1))
                    if bad.group(1) == "drop_path_rate" and dropped:
                        log.warning("backbone '%s' has no stochastic depth: drop_path_rate=%s ignored", name, dropped)
                    continue
                raise ConfigError(f"model.backbone.name: timm's '{name}' cannot be built as a feature extractor "
                                  f"({_first_line(e)})") from None
            except RuntimeError as e:
                if "Unknown model" in str(e):
                    raise ConfigError(f"model.backbone.name: timm has no model '{name}'") from None
                if "features_only" in str(e) or not pretrained:
                    raise ConfigError(f"model.backbone.name: timm's '{name}' cannot be built as a feature "
                                      f"extractor ({_first_line(e)})") from None
                raise CheckpointError(f"backbone '{name}': pretrained weights unavailable ({_first_line(e)}); "
                                      f"give a local file with model.backbone.checkpoint=PATH") from None
            except OSError as e:  # no network, no cached hub file
                if not pretrained:
                    raise
                raise CheckpointError(f"backbone '{name}': cannot download pretrained weights "
                                      f"({type(e).__name__}: {_first_line(e)[:200]}); give a local file with "
                                      f"model.backbone.checkpoint=PATH") from None

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

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pixels 0-255 (uint8 or float) -> float ``(x - 255 mean) / (255 std)``."""
        return (x.float() - self.pixel_mean) / self.pixel_std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """``normalize``'s inverse: normalised floats -> float pixels 0-255."""
        return x * self.pixel_std + self.pixel_mean

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) pixels (``INPUT_CONTRACT``) -> list of (B, C_i, H/s_i, W/s_i), finest first."""
        feats = self.body(self.normalize(x))
        if self.nhwc:
            feats = [f.permute(0, 3, 1, 2) for f in feats]
        if self.pyramid is not None:
            feats = self.pyramid(feats[-1])
        return list(feats)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
