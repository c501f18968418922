"""A training sampler whose order is a function of (seed, epoch), so a killed run resumes at the same sample."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """Shuffled (or sequential) indices, reshuffled per epoch from ``seed + epoch``.

    ``resume_at(epoch, consumed)`` makes the next pass start after the first ``consumed`` samples of that
    epoch's order: the rest of the epoch is exactly what the killed run would have seen. ``consumed_fn``,
    if given, is asked for that number each time a pass starts (a trainer knows it only once it has
    restored its loops, after it built the loader). ``len`` stays the full epoch so the trainer's batch
    count does not change.
    """

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True,
                 consumed_fn: Callable[[], int] | None = None) -> None:
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.consumed_fn = consumed_fn
        self.epoch = 0
        self._start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume_at(self, epoch: int, consumed: int) -> None:
        self.epoch = int(epoch)
        self._start = max(0, min(int(consumed), self.num_samples))

    def order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_samples)
        g = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.num_samples, generator=g)

    def __iter__(self) -> Iterator[int]:
        start, self._start = self._start, 0
        if not start and self.consumed_fn is not None:
            start = max(0, min(int(self.consumed_fn()), self.num_samples))
        yield from self.order(self.epoch)[start:].tolist()

    def __len__(self) -> int:
        return self.num_samples
