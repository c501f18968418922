"""LightningDataModule: builds the train/val data sets from config and batches them.

One data set, or several (``train`` and ``val`` given as ``{name: factory}``): several training
sets are mixed batch by batch by ``ratios`` (see ``fourm21.data.mixed``); several val sets are
validated one after the other, each scored on the tasks its labels cover.

Under DDP the loaders are sharded here: the training set by a ``DistributedSampler`` that honours
``shuffle`` (Lightning's own always shuffles), the val sets without padding, so each val image is
scored exactly once (by one process), and a mixed-data batch order batch by batch
(``RankBatchSampler``).

Training-pass state reaches the DataLoader workers through ``clock`` (``fourm21.data.clock``): when a
training pass starts, its sampler (in the main process, before it hands out any index) sets the
clock's seed, epoch and max_epochs, which the workers' copies of the data sets (mosaic, close_mosaic)
and of the collate function (multi-scale batches, ``multiscale``) read.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import lightning as L
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import (
    BatchSampler,
    ConcatDataset,
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    Sampler,
)

from fourm21.data.clock import EpochClock
from fourm21.data.collate import collate_samples
from fourm21.data.mixed import RatioBatchSampler
from fourm21.data.multiscale import MultiScaleCollate
from fourm21.data.samplers import ResumableSampler
from fourm21.data.transforms import pipelines_in, reseed_worker_transforms, seed_pipeline


def _as_dict(factories: Any) -> dict[str, Callable[[], Dataset]]:
    if factories is None:
        return {}
    if isinstance(factories, Mapping):
        return {k: v for k, v in factories.items() if v is not None}
    return {"main": factories}


def _leaves(datasets: Any) -> Iterator[Dataset]:
    """The data sets inside ``datasets`` (through ConcatDataset and Subset)."""
    stack, seen = list(datasets), set()
    while stack:
        ds = stack.pop()
        if id(ds) in seen:
            continue
        seen.add(id(ds))
        stack.extend(getattr(ds, "datasets", []))
        if hasattr(ds, "dataset"):
            stack.append(ds.dataset)
        yield ds


class _CallsOnPass:
    """Mixin for a sampler: calls ``on_pass(epoch)`` when a pass starts (main process, first index)."""

    def __init__(self, *args: Any, on_pass: Callable[[int], None] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_pass = on_pass

    def __iter__(self) -> Iterator[int]:
        if self.on_pass is not None:
            self.on_pass(self.epoch)
        yield from super().__iter__()


class _SeededSamples(Dataset):
    """A training set whose augmentation of sample ``i`` is a function of (seed, epoch, ``i``) alone.

    Not of the worker, the batch order or what came before: a run resumed mid-epoch augments the rest of the
    epoch as the killed run would have, and any number of workers gives the same batches."""

    def __init__(self, dataset: Dataset, clock: EpochClock) -> None:
        self.dataset, self.clock = dataset, clock
        self._pipelines = pipelines_in(dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        for k, pipeline in enumerate(self._pipelines):
            seed_pipeline(pipeline, (self.clock.seed, self.clock.epoch, int(index), k))
        return self.dataset[index]


class _PassStartSampler(_CallsOnPass, ResumableSampler):
    """A ``ResumableSampler`` that calls ``on_pass(epoch)`` when a pass starts."""


class _PassStartDistributedSampler(_CallsOnPass, DistributedSampler):
    """A ``DistributedSampler`` that calls ``on_pass(epoch)`` when a pass starts (Lightning keeps it under DDP)."""


class RankBatchSampler(BatchSampler):
    """Process ``rank`` of ``num_replicas`` takes batches rank, rank + num_replicas, ... of ``batches``.

    For batch samplers that draw whole batches from a seed (``RatioBatchSampler``): every process
    draws the same order and keeps its share. ``sampler`` is only read for its ``rank`` and
    ``num_replicas``: under DDP Lightning re-creates this object with its ``DistributedSampler``
    there; in one process it is any sampler (rank 0 of 1). Each process gets ``len(batches) //
    num_replicas`` batches, so all take the same number of steps.
    """

    def __init__(self, sampler: Sampler | Any, batches: Sampler[list[int]],  # noqa: D107
                 on_pass: Callable[[int], None] | None = None) -> None:
        self.sampler = sampler
        self.batches = batches
        self.on_pass = on_pass  # called with the epoch when a pass starts (an init argument: kept when re-created)

    def _shard(self) -> tuple[int, int]:
        return int(getattr(self.sampler, "rank", 0)), int(getattr(self.sampler, "num_replicas", 1))

    def __len__(self) -> int:
        return len(self.batches) // self._shard()[1]

    def __iter__(self):
        if self.on_pass is not None:
            self.on_pass(int(getattr(self.batches, "epoch", 0)))
        rank, replicas = self._shard()
        end = len(self) * replicas
        for i, batch in enumerate(self.batches):
            if i >= end:
                break
            if i % replicas == rank:
                yield batch

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.batches, "set_epoch"):
            self.batches.set_epoch(epoch)


class MultiTaskDataModule(L.LightningDataModule):
    """``train`` / ``val``: a zero-argument dataset factory (Hydra ``_partial_``) or a dict of them.

    ``prepare`` is an optional callable run before the datasets are built (the shapes generator).
    ``batch_size`` may be a dict per training set (per process under DDP); ``ratios`` weights the
    training sets. ``shuffle: false`` keeps the training set in file order (reproducible runs, the
    DDP equivalence test). ``multiscale``: ``[lo, hi]`` scale factors; each training batch is resized to a
    random multiple of ``multiscale_stride`` in that range times its size (``fourm21.data.multiscale``).
    """

    def __init__(self, train: Any, val: Any, batch_size: int | Mapping[str, int],
                 val_batch_size: int | None = None, num_workers: int = 0, prepare: Any = None,
                 pin_memory: bool = False, ratios: Mapping[str, float] | None = None,
                 batches_per_epoch: int | None = None, seed: int = 0, shuffle: bool = True,
                 multiscale: Sequence[float] | None = None, multiscale_stride: int = 32) -> None:
        super().__init__()
        self._train_factories = _as_dict(train)
        self._val_factories = _as_dict(val)
        self._prepare = prepare
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.ratios = dict(ratios or {})
        self.batches_per_epoch = batches_per_epoch
        self.seed = seed
        self.shuffle = shuffle
        self.clock = EpochClock(seed=seed)
        self.train_collate = (MultiScaleCollate(list(multiscale), multiscale_stride, self.clock)
                              if multiscale else collate_samples)
        self.train_sets: dict[str, Dataset] = {}
        self.val_sets: dict[str, Dataset] = {}
        self.unlabelled_set: Dataset | None = None
        self.unlabelled_batch_size = 0

    def attach_unlabelled(self, dataset: Dataset, batch_size: int) -> None:
        """Semi-supervised runs: every training batch becomes ``{"sup": labelled, "unsup": unlabelled}``."""
        self.unlabelled_set = dataset
        self.unlabelled_batch_size = int(batch_size)

    def _bs(self, name: str) -> int:
        return int(self.batch_size[name]) if isinstance(self.batch_size, Mapping) else int(self.batch_size)

    def _val_bs(self, name: str) -> int:
        if self.val_batch_size:
            return int(self.val_batch_size)
        if isinstance(self.batch_size, Mapping):
            return int(self.batch_size.get(name, max(self.batch_size.values())))
        return int(self.batch_size)

    @property
    def train_set(self) -> Dataset | None:
        return next(iter(self.train_sets.values()), None)

    @property
    def val_set(self) -> Dataset | None:
        """The first val set (the only one unless several are configured)."""
        return next(iter(self.val_sets.values()), None)

    def prepare_data(self) -> None:
        if self._prepare is not None:
            self._prepare()

    def setup(self, stage: str | None = None) -> None:
        if self._prepare is not None:
            self._prepare()  # idempotent; makes setup() alone enough outside a Trainer
        if not self.train_sets and stage in (None, "fit"):
            self.train_sets = {k: f() for k, f in self._train_factories.items()}
            for ds in _leaves(self.train_sets.values()):
                if hasattr(ds, "attach_clock"):
                    ds.attach_clock(self.clock)
        if not self.val_sets:
            self.val_sets = {k: f() for k, f in self._val_factories.items()}

    def _distributed(self) -> dict[str, int] | None:
        """``{"num_replicas", "rank"}`` when a Trainer runs this data module in several processes."""
        trainer = getattr(self, "trainer", None)
        kwargs = trainer.distributed_sampler_kwargs if trainer is not None else None
        return kwargs if kwargs and kwargs.get("num_replicas", 1) > 1 else None

    def _batches_done_this_epoch(self, num_batches: int) -> int:
        """Training batches already run in the current epoch when a pass over the data starts: 0 for a fresh
        epoch, the interrupted run's count when resuming mid-epoch (``processed``: Lightning counts the
        step a checkpoint was saved in as completed only later), 0 again for a checkpoint from an epoch's end."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0
        done = int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        return done if done < num_batches else 0

    def _seed(self) -> int:
        return int(os.environ.get("PL_GLOBAL_SEED", self.seed))

    def start_pass(self, epoch: int) -> None:
        """A training pass starts (called by its sampler in the main process): set the clock the workers read.

        The epoch is the trainer's (right on a resumed run too, where the sampler's is set only later),
        else the sampler's; max_epochs is the trainer's (close_mosaic counts back from it)."""
        trainer = getattr(self, "trainer", None)
        epoch = int(getattr(trainer, "current_epoch", epoch))
        self.clock.set(epoch=epoch, max_epochs=getattr(trainer, "max_epochs", None), seed=self._seed())

    def _loader(self, dataset: Dataset, batch_size: int, train: bool) -> DataLoader:
        sampler = None
        shards = self._distributed()
        if shards and train:  # as Lightning's own sampler, which would always shuffle, seeded by ``seed``
            sampler = _PassStartDistributedSampler(dataset, shuffle=self.shuffle, **shards, seed=self._seed(),
                                                   on_pass=self.start_pass)
        elif shards:  # no padding: every val image once, the last batches off by one at most
            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False, **shards)
        elif train:  # the order is a function of (seed, epoch): a resumed run continues where it was killed
            num_batches = len(dataset) // batch_size
            sampler = _PassStartSampler(len(dataset), seed=self._seed(), shuffle=self.shuffle,
                                        consumed_fn=lambda: self._batches_done_this_epoch(num_batches) * batch_size,
                                        on_pass=self.start_pass)
        return DataLoader(_SeededSamples(dataset, self.clock) if train else dataset, batch_size=batch_size,
                          sampler=sampler, num_workers=self.num_workers,
                          worker_init_fn=reseed_worker_transforms,
                          collate_fn=self.train_collate if train else collate_samples, pin_memory=self.pin_memory,
                          drop_last=train,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader | CombinedLoader:
        labelled = self._labelled_loader()
        if self.unlabelled_set is None:
            return labelled
        # as many unlabelled batches as labelled ones, reshuffled (and cycled) every epoch; under DDP
        # each process takes its share of them (Lightning's own replacement would drop num_samples)
        shards = self._distributed()
        replicas = shards["num_replicas"] if shards else 1  # len(labelled) is this process's share
        sampler = RandomSampler(self.unlabelled_set, num_samples=len(labelled) * self.unlabelled_batch_size * replicas)
        if shards:
            sampler = DistributedSamplerWrapper(sampler, shuffle=False, **shards)
        unlabelled = DataLoader(self.unlabelled_set, batch_size=self.unlabelled_batch_size, sampler=sampler,
                                worker_init_fn=reseed_worker_transforms,
                                drop_last=True, num_workers=self.num_workers, collate_fn=collate_samples,
                                pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0)
        return CombinedLoader({"sup": labelled, "unsup": unlabelled}, mode="min_size")

    def _labelled_loader(self) -> DataLoader:
        if len(self.train_sets) == 1:
            name, ds = next(iter(self.train_sets.items()))
            return self._loader(ds, self._bs(name), train=True)
        names = list(self.train_sets)
        batches = RatioBatchSampler([len(self.train_sets[n]) for n in names],
                                    [float(self.ratios.get(n, 1.0)) for n in names],
                                    [self._bs(n) for n in names], self.batches_per_epoch, self.seed)
        dataset = ConcatDataset([self.train_sets[n] for n in names])
        # built here, in the hook, so that Lightning can re-create it with its own DistributedSampler under DDP
        shards = self._distributed()
        sampler = RankBatchSampler(DistributedSampler(dataset, shuffle=False, **shards) if shards else
                                   range(len(dataset)), batches, on_pass=self.start_pass)
        return DataLoader(_SeededSamples(dataset, self.clock), batch_sampler=sampler,
                          worker_init_fn=reseed_worker_transforms,
                          num_workers=self.num_workers, collate_fn=self.train_collate, pin_memory=self.pin_memory,
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        loaders = [self._loader(ds, self._val_bs(n), train=False) for n, ds in self.val_sets.items()]
        return loaders[0] if len(loaders) == 1 else loaders

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        return self.val_dataloader()
