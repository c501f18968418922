"""The training clock the data pipeline reads: seed, epoch and max_epochs, shared with DataLoader workers.

Mosaic (``CocoDataset.mosaic``, off for the last ``close_mosaic`` epochs) and multi-scale batches
(``fourm21.data.multiscale``) draw their randomness from ``(seed, epoch, index)`` rather than from a
stream, so a run is repeatable whatever the number of workers and a resumed run draws what the killed
one would have. The epoch has to reach the workers, which are started once (``persistent_workers``)
with a copy of the data set: the clock is a shared-memory tensor, written by the data module in the
main process when a training pass starts (before any index of that pass is handed to a worker) and
read by the workers' copies. No callback is needed.
"""

from __future__ import annotations

import torch


class EpochClock:
    """``seed``, ``epoch`` and ``max_epochs`` (-1: unknown) in shared memory; ``set`` from the main process."""

    def __init__(self, seed: int = 0, epoch: int = 0, max_epochs: int | None = None) -> None:
        self._state = torch.zeros(3, dtype=torch.int64).share_memory_()
        self.set(epoch=epoch, max_epochs=max_epochs, seed=seed)

    def set(self, epoch: int, max_epochs: int | None = None, seed: int | None = None) -> None:
        self._state[1] = int(epoch)
        self._state[2] = int(max_epochs) if max_epochs is not None and int(max_epochs) > 0 else -1
        if seed is not None:
            self._state[0] = int(seed) % 2**63

    @property
    def seed(self) -> int:
        return int(self._state[0])

    @property
    def epoch(self) -> int:
        return int(self._state[1])

    @property
    def max_epochs(self) -> int | None:
        m = int(self._state[2])
        return m if m > 0 else None

    def epochs_left(self) -> int | None:
        """Epochs left including the current one (None when ``max_epochs`` is unknown)."""
        return None if self.max_epochs is None else self.max_epochs - self.epoch

    def __repr__(self) -> str:
        return f"EpochClock(seed={self.seed}, epoch={self.epoch}, max_epochs={self.max_epochs})"
