"""The one network: backbone -> neck -> (classification) -> fusion -> dense heads.

Built from a plain config (``build_model``) so every part is swappable by a Hydra override.
Holds no training code: losses are ``fourm21.losses.heads``, decoding is ``fourm21.inference.decode``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from fourm21.errors import ConfigError
from fourm21.models.backbone import TimmBackbone
from fourm21.models.cpu_autocast import keep_fp32_under_cpu_autocast
from fourm21.models.fusion import ContextFusion
from fourm21.models.heads.base import Head
from fourm21.models.neck import FpnPan


class MultiTaskNet(nn.Module):
    def __init__(self, backbone: TimmBackbone, neck: FpnPan | None, heads: Mapping[str, Head],
                 fusion: ContextFusion | None = None, channels_last: bool = False) -> None:
        """``neck`` None: no head reads the neck (image-level heads only), so there is no neck, and no fusion."""
        super().__init__()
        self.channels_last = channels_last
        # the neck may start at a coarser level than the backbone's finest (``neck.skip_unused``)
        self.neck_first = backbone.strides.index(neck.strides[0]) if neck is not None else 0
        self.backbone = backbone
        self.neck = neck
        self.heads = nn.ModuleDict(heads)
        self.fusion = fusion
        for name, head in self.heads.items():
            if head.source == "neck" and neck is None:
                raise ConfigError(f"model.heads.{name}: reads the neck, but the network was built without one")
            missing = [s for s in head.strides if s not in neck.strides] if head.source == "neck" else []
            if missing:
                raise ConfigError(f"model.heads.{name}.strides: {missing} not among the neck's strides {neck.strides} "
                                  f"(backbone '{self.backbone.name}' gives {self.backbone.strides})")

    def _levels(self, feats: list[torch.Tensor], strides: list[int]) -> list[torch.Tensor]:
        return [feats[self.neck.strides.index(s)] for s in strides]

    def forward(self, images: torch.Tensor, caption_tokens: torch.Tensor | None = None
                ) -> dict[str, dict[str, torch.Tensor]]:
        """(B, 3, H, W) normalised images [+ (B, T) caption token ids] -> {task: raw head output}.

        ``channels_last``: the images enter the backbone in channels-last layout, so oneDNN (CPU) and
        cuDNN (bf16) convolutions skip layout reorders (lite's CPU training step: ~17 % faster).
        """
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        feats = self.backbone(images)
        out: dict[str, dict[str, torch.Tensor]] = {}
        for name, head in self.heads.items():
            if head.source == "backbone":
                out[name] = head(feats, text=caption_tokens) if head.uses_text else head(feats)
        if self.neck is None:  # image-level heads only: no dense maps to compute
            return out
        dense = self.neck(feats[self.neck_first:])
        if self.fusion is not None:
            context = next((out[n]["logits"] for n, h in self.heads.items() if h.fusion_context and n in out), None)
            dense = self.fusion(dense, feats[-1], context)
        for name, head in self.heads.items():
            if head.source == "neck":
                out[name] = head(self._levels(dense, head.strides))
        return out


def _first_neck_level(cfg: DictConfig, strides: list[int]) -> int:
    """Index of the finest backbone level an enabled neck head reads: finer levels need no FPN/PAN maps
    (e.g. ``experiment=coco`` heads start at stride 8, and a stride-4 level costs 80 x 80 convolutions
    at 320 px for nothing)."""
    used = [s for hcfg in cfg.heads.values() if hcfg is not None and hcfg.get("enabled", True)
            and get_class(hcfg["_target_"]).source == "neck" for s in hcfg.get("strides", [])]
    finest = min(used) if used else strides[0]
    return max([i for i, s in enumerate(strides) if s <= finest] or [0])


def _key(section: Mapping, key: str, where: str):
    """``section[key]``; a ConfigError naming ``where.key`` when the config leaves it out (the shipped
    fourm21/configs/model/*.yaml sets every key: no default in code)."""
    if key not in section:
        raise ConfigError(f"{where}.{key} is missing from the config (fourm21/configs/model/multitask.yaml sets it)")
    return section[key]


def build_model(cfg: DictConfig | Mapping) -> MultiTaskNet:
    """Assemble the network from ``model`` config: backbone, neck, fusion, and every enabled head."""
    cfg = OmegaConf.create(cfg) if not isinstance(cfg, DictConfig) else cfg
    backbone = TimmBackbone(**OmegaConf.to_container(cfg.backbone, resolve=True))
    neck_cfg = OmegaConf.to_container(_key(cfg, "neck", "model"), resolve=True)
    first = _first_neck_level(cfg, backbone.strides) if _key(neck_cfg, "skip_unused", "model.neck") else 0
    neck_cfg.pop("skip_unused")
    dense = any(h is not None and h.get("enabled", True) and get_class(h["_target_"]).source == "neck"
                for h in cfg.heads.values() if h is not None and "_target_" in h)
    # no head reads the neck (a classification or attribute model): neither neck nor fusion is built or run
    neck = FpnPan(backbone.channels[first:], backbone.strides[first:], **neck_cfg) if dense else None
    heads: dict[str, Head] = {}
    for name, hcfg in cfg.heads.items():
        if hcfg is None or not hcfg.get("enabled", True):
            continue
        params = OmegaConf.to_container(hcfg, resolve=True)
        params.pop("enabled", None)
        if "_target_" not in params:
            raise ConfigError(f"model.heads.{name}: missing '_target_' (the head class to build)")
        try:
            head_cls = get_class(params["_target_"])
        except Exception as e:  # hydra wraps import errors; name the key instead
            raise ConfigError(f"model.heads.{name}._target_: cannot import '{params['_target_']}' ({e})") from None
        in_channels = list(backbone.channels) if head_cls.source == "backbone" or neck is None else neck.channels
        try:
            head = instantiate(params, in_channels=in_channels)
        except InstantiationException as e:  # hydra wraps the head's own one-line ConfigError: raise that
            if isinstance(e.__cause__, ConfigError):
                raise e.__cause__ from None
            raise
        head.name = name
        heads[name] = head
    fusion = None
    fcfg = _key(cfg, "fusion", "model")
    if _key(fcfg, "enabled", "model.fusion") and neck is not None:
        context = [h.num_classes for h in heads.values() if h.fusion_context]
        num_cls = context[0] if context and _key(fcfg, "use_class_probs", "model.fusion") else 0
        fusion = ContextFusion(backbone.channels[-1], neck.channels, len(neck.strides), num_cls,
                               hidden=_key(fcfg, "hidden", "model.fusion"))
    net = MultiTaskNet(backbone, neck, heads, fusion, channels_last=bool(_key(cfg, "channels_last", "model")))
    return keep_fp32_under_cpu_autocast(net)
