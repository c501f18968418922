"""SimMIM-style masked-image modelling for ViT backbones (Xie et al. 2022).

Random square blocks of patch tokens are replaced by a learned mask token right after the patch
embedding; a linear decoder (1x1 conv + pixel shuffle) predicts the pixels of the image from the
last block's tokens. Only the backbone's own modules (``TimmBackbone.body``) are pretrained, so
the weights load into any multitask run with ``model.backbone.checkpoint``.
"""

from __future__ import annotations

import torch
from torch import nn

from fourm21.errors import ConfigError
from fourm21.models.backbone import TimmBackbone


def random_block_mask(batch: int, grid: tuple[int, int], block: int, ratio: float,
                      generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, gh, gw) bool token mask: ``ratio`` of ``block`` x ``block`` token squares set, exactly, per image."""
    gh, gw = grid
    bh, bw = -(-gh // block), -(-gw // block)
    n_blocks = bh * bw
    n_masked = min(max(int(round(ratio * n_blocks)), 1), n_blocks)
    noise = torch.rand(batch, n_blocks, generator=generator)
    order = noise.argsort(dim=1)
    coarse = torch.zeros(batch, n_blocks, dtype=torch.bool)
    coarse.scatter_(1, order[:, :n_masked], True)
    coarse = coarse.view(batch, bh, bw)
    fine = coarse.repeat_interleave(block, dim=1).repeat_interleave(block, dim=2)[:, :gh, :gw]
    return fine.to(device)


class MaskedImageModel(nn.Module):
    """ViT backbone + mask token + linear pixel decoder.

    ``forward(images, token_mask)`` with images (B, 3, H, W) and token_mask (B, H/p, W/p) returns the
    reconstruction (B, 3, H, W); the loss is taken on masked pixels only (see
    ``fourm21.losses.masked_image``).
    """

    def __init__(self, backbone: TimmBackbone) -> None:
        super().__init__()
        vit = getattr(backbone.body, "model", None)
        if not backbone.is_vit or vit is None or not hasattr(vit, "patch_embed"):
            raise ConfigError(f"backbone.name: masked-image pretraining (method=simmim) needs a ViT, got "
                              f"'{backbone.name}'; use method=simclr for convolutional backbones")
        self.backbone = backbone
        self.vit = vit
        self.patch_size = int(vit.patch_embed.patch_size[0])
        dim = int(vit.embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.decoder = nn.Sequential(nn.Conv2d(dim, self.patch_size ** 2 * 3, 1), nn.PixelShuffle(self.patch_size))
        self._token_mask: torch.Tensor | None = None
        vit.patch_embed.register_forward_hook(self._mask_tokens)

    def _mask_tokens(self, module: nn.Module, inputs: tuple, tokens: torch.Tensor) -> torch.Tensor | None:
        """Swap masked patch tokens for the mask token; tokens are (B, gh, gw, C) or (B, gh*gw, C)."""
        if self._token_mask is None:
            return None
        m = self._token_mask.to(tokens.dtype)
        m = m.unsqueeze(-1) if tokens.ndim == 4 else m.flatten(1).unsqueeze(-1)
        return tokens * (1 - m) + self.mask_token.to(tokens.dtype) * m

    def encode(self, images: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """(B, C, H/p, W/p) last-block tokens of the masked image."""
        self._token_mask = token_mask
        try:
            return self.backbone.body(self.backbone.normalize(images))[-1]
        finally:
            self._token_mask = None

    def forward(self, images: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encode(images, token_mask))

    def grid(self, img_size: tuple[int, int]) -> tuple[int, int]:
        return img_size[0] // self.patch_size, img_size[1] // self.patch_size
