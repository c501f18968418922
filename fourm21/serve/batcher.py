"""An asyncio micro-batcher: requests that arrive together share one forward pass.

A request waits at most ``batch_timeout_s`` for others to join it; requests queued while the model
runs form the next batch at once. Batches run one at a time in a thread of their own (not asyncio's shared
pool, where they would queue behind the decoding of every upload under load), so the event loop keeps
accepting uploads and the model is never entered by two threads together.

The queue is bounded: with ``max_queue`` items waiting, ``submit`` refuses at once (``QueueFullError``, the
service's 429) instead of letting the wait grow without bound, and an item still waiting after
``queue_timeout_s`` is failed with ``QueueTimeoutError`` (503). ``stop`` fails whatever still waits with
``BatcherStoppedError``, so no submitter is ever left waiting for a result that will not come.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)


class QueueFullError(Exception):
    """``max_queue`` items already wait; ``retry_after_s`` is when a retry has a fair chance (whole seconds)."""

    def __init__(self, depth: int, max_queue: int, retry_after_s: int) -> None:
        super().__init__(f"the queue is full: {depth} images wait for the model (max_queue={max_queue}); "
                         f"retry in {retry_after_s} s")
        self.depth, self.retry_after_s = depth, retry_after_s


class QueueTimeoutError(Exception):
    """The item waited ``queue_timeout_s`` without its batch starting."""

    def __init__(self, waited_s: float, retry_after_s: int) -> None:
        super().__init__(f"waited {waited_s:.1f} s in the queue without reaching the model (queue_timeout_s)")
        self.waited_s, self.retry_after_s = waited_s, retry_after_s


class BatcherStoppedError(Exception):
    """The batcher stopped (the service is shutting down) before the item ran."""


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


@dataclass(eq=False)
class _Entry(Generic[T]):
    """One submitted item while it waits: its future, when it arrived, and its queue-timeout timer."""

    item: T
    future: asyncio.Future
    queued_at: float
    timer: asyncio.TimerHandle | None = field(default=None)


class MicroBatcher(Generic[T, R]):
    """``await submit(item)`` -> ``Batched`` with ``run_batch([..., item, ...])``'s result for ``item``.

    ``run_batch`` maps a list of up to ``max_batch_size`` items to as many results. If a batch fails,
    its items are retried one by one, so one bad item fails only its own request. ``max_queue`` /
    ``queue_timeout_s`` None: unbounded. ``on_batch(size, seconds)`` is told of every batch that ran."""

    def __init__(self, run_batch: Callable[[Sequence[T]], Sequence[R]], max_batch_size: int,
                 batch_timeout_s: float, max_queue: int | None = None, queue_timeout_s: float | None = None,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_queue is not None and max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.run_batch, self.max_batch_size, self.batch_timeout_s = run_batch, max_batch_size, batch_timeout_s
        self.max_queue, self.queue_timeout_s, self.on_batch = max_queue, queue_timeout_s, on_batch
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Entry[T]] | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._waiting: set[_Entry[T]] = set()  # submitted, not yet running, not yet answered
        self._running: list[_Entry[T]] = []  # the batch in the model now
        self._batch_s = 0.0  # moving average of a batch's run time: the Retry-After estimate

    @property
    def depth(self) -> int:
        """Items waiting for the model (queued or in a batch still forming)."""
        return len(self._waiting)

    @property
    def full(self) -> bool:
        return self.max_queue is not None and self.depth >= self.max_queue

    def retry_after_s(self, depth: int | None = None) -> int:
        """Whole seconds until ``depth`` items (default: those waiting now) should have run, at least 1: the
        ``Retry-After``, from the recent batch times."""
        batches = math.ceil((self.depth if depth is None else depth) / self.max_batch_size) + 1
        return max(1, math.ceil(batches * self._batch_s))

    def start(self) -> None:
        """Start the batch loop on the running event loop (the app's startup)."""
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fourm21-batch")
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """End the batch loop; every item still waiting fails with ``BatcherStoppedError``."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for entry in [*self._waiting, *self._running]:
            self._forget(entry)
            _fail(entry.future, BatcherStoppedError("the service is shutting down"))
        self._running = []
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def submit(self, item: T) -> Batched[R]:
        if self._queue is None or self._task is None:
            raise BatcherStoppedError("the batcher is not running")
        if self.full:
            raise QueueFullError(self.depth, self.max_queue, self.retry_after_s())
        loop = asyncio.get_running_loop()
        entry = _Entry(item, loop.create_future(), loop.time())
        if self.queue_timeout_s is not None:
            entry.timer = loop.call_later(self.queue_timeout_s, self._expire, entry)
        self._waiting.add(entry)
        entry.future.add_done_callback(lambda _: self._forget(entry))  # answered or cancelled: not waiting
        self._queue.put_nowait(entry)
        return await entry.future  # cancelled by a request timeout: the loop then skips the item

    def _forget(self, entry: _Entry[T]) -> None:
        self._waiting.discard(entry)
        if entry.timer is not None:
            entry.timer.cancel()

    def _expire(self, entry: _Entry[T]) -> None:
        if entry in self._waiting:
            self._forget(entry)
            waited = asyncio.get_running_loop().time() - entry.queued_at
            _fail(entry.future, QueueTimeoutError(waited, self.retry_after_s()))

    async def _collect(self) -> list[_Entry[T]]:
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
        live = [e for e in batch if not e.future.done()]
        for entry in live:  # running now: no longer waiting, no queue timeout
            self._forget(entry)
        return live

    async def _loop(self) -> None:
        while True:
            batch = self._running = await self._collect()
            if not batch:
                continue
            start = time.perf_counter()
            try:
                results = await self._in_thread([e.item for e in batch])
            except Exception as e:  # noqa: BLE001 - handed to the requests (or retried item by item)
                if len(batch) == 1:
                    log.exception("prediction failed")
                    _fail(batch[0].future, e)
                    continue
                log.warning("batch of %d failed (%s); retrying its items one by one", len(batch), e)
                for entry in batch:
                    await self._run_alone(entry)
                continue
            self._record(len(batch), time.perf_counter() - start)
            for entry, res in zip(batch, results):
                _resolve(entry.future, Batched(res, len(batch)))

    async def _run_alone(self, entry: _Entry[T]) -> None:
        start = time.perf_counter()
        try:
            (res,) = await self._in_thread([entry.item])
        except Exception as e:  # noqa: BLE001 - handed to the request that sent the item
            log.exception("prediction failed")
            _fail(entry.future, e)
        else:
            self._record(1, time.perf_counter() - start)
            _resolve(entry.future, Batched(res, 1))

    def _record(self, size: int, seconds: float) -> None:
        self.stats.record(size)
        self._batch_s = seconds if self._batch_s == 0 else 0.8 * self._batch_s + 0.2 * seconds
        if self.on_batch is not None:
            self.on_batch(size, seconds)

    async def _in_thread(self, items: list[T]) -> list[R]:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._run, items)

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
