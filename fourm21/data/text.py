"""Offline caption encoding: lower-cased words hashed into a fixed number of buckets.

Hashing needs no vocabulary file, so the same ids come out at training, evaluation and predict
time, on any machine, for words never seen in training too (they share buckets).
"""

from __future__ import annotations

import re
import zlib

import torch

TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(text: str, num_buckets: int = 4096, max_tokens: int = 32) -> torch.Tensor:
    """(max_tokens,) int64 ids in [1, num_buckets); 0 pads. Words and adjacent word pairs are hashed."""
    words = TOKEN.findall(text.lower())
    grams = words + [f"{a}_{b}" for a, b in zip(words, words[1:])]
    ids = [1 + zlib.crc32(g.encode()) % (num_buckets - 1) for g in grams][:max_tokens]
    out = torch.zeros(max_tokens, dtype=torch.long)
    if ids:
        out[: len(ids)] = torch.tensor(ids)
    return out
