"""An asyncio micro-batcher: requests that arrive together share one forward pass.

A request waits at most ``batch_timeout_s`` for others to join it; requests queued while the model
runs form the next batch at once. Batches run one at a time in a worker thread, so the event loop
keeps accepting uploads and the model is never entered by two threads together.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Batched(Generic[R]):
    """One item's result and the size of the batch it ran in."""

    result: R
    batch_size: int


class BatchStats:
    """How many items ran in batches of each size (read by ``GET /info``, written by the batch loop)."""

    def __init__(self) -> None:
        self._sizes: Counter[int] = Counter()
        self._lock = threading.Lock()

    def record(self, size: int) -> None:
        with self._lock:
            self._sizes[size] += 1

    def as_dict(self) -> dict:
        with self._lock:
            sizes = dict(sorted(self._sizes.items()))
        items, batches = sum(k * n for k, n in sizes.items()), sum(sizes.values())
        return {"images": items, "batches": batches, "batch_sizes": {str(k): n for k, n in sizes.items()},
                "max_batch_size_seen": max(sizes, default=0),
                "mean_batch_size": round(items / batches, 3) if batches else 0.0}


class MicroBatcher(Generic[T, R]):
    """``await submit(item)`` -> ``Batched`` with ``run_batch([..., item, ...])``'s result for ``item``.

    ``run_batch`` maps a list of up to ``max_batch_size`` items to as many results. If a batch fails,
    its items are retried one by one, so one bad item fails only its own request."""

    def __init__(self, run_batch: Callable[[Sequence[T]], Sequence[R]], max_batch_size: int,
                 batch_timeout_s: float) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.run_batch, self.max_batch_size, self.batch_timeout_s = run_batch, max_batch_size, batch_timeout_s
        self.stats = BatchStats()
        self._queue: asyncio.Queue[tuple[T, asyncio.Future]] | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start the batch loop on the running event loop (the app's startup)."""
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def submit(self, item: T) -> Batched[R]:
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future))
        return await future  # cancelled by a request timeout: the loop then skips the item

    async def _collect(self) -> list[tuple[T, asyncio.Future]]:
        """The next batch: the first queued item plus whatever else arrives within ``batch_timeout_s``."""
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.batch_timeout_s
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return [(item, fut) for item, fut in batch if not fut.done()]

    async def _loop(self) -> None:
        while True:
            batch = await self._collect()
            if not batch:
                continue
            try:
                results = await asyncio.to_thread(self._run, [item for item, _ in batch])
            except Exception as e:  # noqa: BLE001 - handed to the requests (or retried item by item)
                if len(batch) == 1:
                    log.exception("prediction failed")
                    _fail(batch[0][1], e)
                    continue
                log.warning("batch of %d failed (%s); retrying its items one by one", len(batch), e)
                for item, fut in batch:
                    await self._run_alone(item, fut)
                continue
            self.stats.record(len(batch))
            for (_, fut), res in zip(batch, results):
                _resolve(fut, Batched(res, len(batch)))

    async def _run_alone(self, item: T, fut: asyncio.Future) -> None:
        try:
            (res,) = await asyncio.to_thread(self._run, [item])
        except Exception as e:  # noqa: BLE001 - handed to the request that sent the item
            log.exception("prediction failed")
            _fail(fut, e)
        else:
            self.stats.record(1)
            _resolve(fut, Batched(res, 1))

    def _run(self, items: list[T]) -> list[R]:
        results = list(self.run_batch(items))
        if len(results) != len(items):
            raise RuntimeError(f"run_batch returned {len(results)} results for {len(items)} items")
        return results


def _resolve(fut: asyncio.Future, value: object) -> None:
    if not fut.done():
        fut.set_result(value)


def _fail(fut: asyncio.Future, exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
