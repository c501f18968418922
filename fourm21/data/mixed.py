"""Training on several data sets at once: each batch is drawn from one data set, chosen by ratio.

One data set per batch keeps every batch at one image size (CIFAR at 32 px, COCO at 320 px) and
lets each batch's task masks say which heads it trains; over an epoch the ratios decide how
often each data set (and so each task) is seen.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from fourm21.errors import ConfigError


class RatioBatchSampler(Sampler[list[int]]):
    """Yields batches of indices into a ``ConcatDataset`` of data sets with ``lengths``.

    ``ratios[i]`` is the share of batches drawn from data set i; ``batch_sizes[i]`` its batch size;
    an epoch has ``num_batches`` batches (default: enough to see the largest share's data once).
    Each data set is walked in a fresh random order, restarted when exhausted.
    """

    def __init__(self, lengths: Sequence[int], ratios: Sequence[float], batch_sizes: Sequence[int],
                 num_batches: int | None = None, seed: int = 0) -> None:
        if len(lengths) != len(ratios) or len(lengths) != len(batch_sizes):
            raise ConfigError("data.ratios: need one ratio and one batch size per training data set")
        if any(r < 0 for r in ratios) or sum(ratios) <= 0:
            raise ConfigError(f"data.ratios: must be >= 0 and not all 0, got {list(ratios)}")
        self.lengths = list(lengths)
        self.ratios = torch.tensor(ratios, dtype=torch.float64) / sum(ratios)
        self.batch_sizes = list(batch_sizes)
        self.offsets = [sum(self.lengths[:i]) for i in range(len(self.lengths))]
        if num_batches is None:
            per = [n / b / max(float(r), 1e-9) for n, b, r in zip(self.lengths, self.batch_sizes, self.ratios)
                   if r > 0]
            num_batches = max(1, int(min(per)))
        self.num_batches = num_batches
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        orders = [torch.randperm(n, generator=g) for n in self.lengths]
        cursors = [0] * len(self.lengths)
        choice = torch.multinomial(self.ratios, self.num_batches, replacement=True, generator=g)
        for d in choice.tolist():
            bs = self.batch_sizes[d]
            if cursors[d] + bs > self.lengths[d]:
                orders[d] = torch.randperm(self.lengths[d], generator=g)
                cursors[d] = 0
            idx = orders[d][cursors[d]:cursors[d] + bs]
            cursors[d] += bs
            yield (idx + self.offsets[d]).tolist()
