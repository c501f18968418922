"""Self-supervised contrastive loss (SimCLR's NT-Xent) for backbone pretraining."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """(B, D) projections of two views of the same B images; each view must pick out its partner
    among the other 2B - 1 embeddings (cross-entropy over cosine similarities / temperature)."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = z @ z.T / temperature
    n = z1.shape[0]
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)
