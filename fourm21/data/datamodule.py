"""LightningDataModule that builds train/val datasets from config and batches them."""

from __future__ import annotations

from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset

from fourm21.data.collate import collate_samples


class MultiTaskDataModule(L.LightningDataModule):
    """Holds already-configured datasets (built by Hydra) and the loader settings.

    ``prepare`` is an optional callable run once before the datasets are built (the shapes
    generator); datasets are given as zero-argument factories so generation happens first.
    """

    def __init__(self, train: Any, val: Any, batch_size: int = 32, val_batch_size: int | None = None,
                 num_workers: int = 0, prepare: Any = None, pin_memory: bool = False) -> None:
        super().__init__()
        self._train_factory = train
        self._val_factory = val
        self._prepare = prepare
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def prepare_data(self) -> None:
        if self._prepare is not None:
            self._prepare()

    def setup(self, stage: str | None = None) -> None:
        if self._prepare is not None:
            self._prepare()  # idempotent; makes setup() alone enough outside a Trainer
        if self.train_set is None and stage in (None, "fit"):
            self.train_set = self._train_factory()
        if self.val_set is None:
            self.val_set = self._val_factory()

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=collate_samples, pin_memory=self.pin_memory, drop_last=shuffle,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.val_batch_size, shuffle=False)
