"""Multi-label classification (sigmoid per class), optionally fused with a caption encoding.

The caption encoder is trained with the network and works offline: hashed word ids
(``fourm21.data.text``) into an EmbeddingBag (``fusion: concat``: mean of the word vectors,
concatenated with the image features, then an MLP) or into token embeddings that the image
feature attends to (``fusion: attention``, one multi-head cross-attention layer).
``text.enabled=false`` trains the same head on the image alone, so the gain can be measured.
Per-class decision thresholds are a buffer: tuned on val, saved in the checkpoint, used by predict.
"""

from __future__ import annotations

import torch
from torch import nn

from fourm21.errors import ConfigError
from fourm21.models.heads.base import Head
from fourm21.models.heads.pooling import MultiScalePool


class MultiLabelHead(Head):
    source = "backbone"
    uses_text = True  # forward(feats, text=caption tokens)

    def __init__(self, in_channels: list[int], num_classes: int, hidden: int = 256, dropout: float = 0.1,
                 threshold: float = 0.5, tune: str = "per_class", text: dict | None = None,
                 norm: str = "group") -> None:
        super().__init__()
        if tune not in ("per_class", "global", "none"):
            raise ConfigError(f"model.heads.mlc.tune must be per_class, global or none, got {tune}")
        self.tune = tune
        text = dict(text or {})
        missing = [k for k in ("enabled", "fusion", "dim", "num_buckets") if k not in text]
        if missing:
            raise ConfigError(f"model.heads.mlc.text.{missing[0]} is missing from the config "
                              f"(fourm21/configs/model/multitask.yaml sets it)")
        self.num_classes = num_classes
        self.pool = MultiScalePool(in_channels, hidden, norm=norm)
        self.text_enabled = bool(text["enabled"])
        self.fusion = text["fusion"]
        if self.fusion not in ("concat", "attention"):
            raise ConfigError(f"model.heads.mlc.text.fusion must be concat or attention, got {self.fusion}")
        dim = int(text["dim"])
        buckets = int(text["num_buckets"])
        width = self.pool.out_channels
        if self.text_enabled and self.fusion == "concat":
            self.text_encoder = nn.EmbeddingBag(buckets, dim, mode="mean", padding_idx=0)
            width += dim
        elif self.text_enabled:
            self.token_embed = nn.Embedding(buckets, dim, padding_idx=0)
            self.query = nn.Linear(width, dim)
            self.attn = nn.MultiheadAttention(dim, num_heads=4, batch_first=True)
            width += dim
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, num_classes))
        self.register_buffer("thresholds", torch.full((num_classes,), float(threshold)))

    def forward(self, feats: list[torch.Tensor], text: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Backbone levels and caption token ids (B, T) (0 = padding, or None) -> logits (B, C)."""
        x = self.pool(feats)
        if self.text_enabled:
            b = x.shape[0]
            if text is None or text.numel() == 0:
                text = torch.zeros(b, 1, dtype=torch.long, device=x.device)
            if self.fusion == "concat":
                t = self.text_encoder(text)
            else:
                tokens = self.token_embed(text)
                pad = text == 0
                pad = pad & ~pad.all(1, keepdim=True)  # an image without caption attends to the padding (zeros)
                t, _ = self.attn(self.query(x)[:, None], tokens, tokens, key_padding_mask=pad, need_weights=False)
                t = t[:, 0]
            x = torch.cat([x, t], dim=1)
        return {"logits": self.mlp(x)}
