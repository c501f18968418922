"""The micro-batcher on its own: batching, the size cap, failure isolation, cancelled requests, the bounded
queue, the queue timeout, and a stop that leaves no submitter waiting."""

from __future__ import annotations

import asyncio
import time

import pytest

from fourm21.serve.batcher import BatcherStoppedError, MicroBatcher, QueueFullError, QueueTimeoutError


def _run(coro):
    return asyncio.run(coro)


def test_concurrent_items_share_batches_up_to_the_cap():
    seen: list[int] = []

    def double(items):
        seen.append(len(items))
        time.sleep(0.02)
        return [2 * x for x in items]

    async def main():
        b = MicroBatcher(double, max_batch_size=4, batch_timeout_s=0.05)
        b.start()
        out = await asyncio.gather(*(b.submit(i) for i in range(10)))
        await b.stop()
        return out, b.stats.as_dict()

    out, stats = _run(main())
    assert [o.result for o in out] == [2 * i for i in range(10)]
    assert max(seen) == 4 and sum(seen) == 10 and len(seen) <= 4
    assert stats["images"] == 10 and stats["batches"] == len(seen) and stats["max_batch_size_seen"] == 4


def test_a_failing_item_fails_only_its_own_request():
    def picky(items):
        if 3 in items:
            raise ValueError("three is bad")
        return list(items)

    async def main():
        b = MicroBatcher(picky, max_batch_size=8, batch_timeout_s=0.05)
        b.start()
        out = await asyncio.gather(*(b.submit(i) for i in range(5)), return_exceptions=True)
        await b.stop()
        return out

    out = _run(main())
    assert isinstance(out[3], ValueError)
    assert [o.result for i, o in enumerate(out) if i != 3] == [0, 1, 2, 4]


def test_a_timed_out_request_is_skipped_and_the_loop_goes_on():
    calls: list[list[int]] = []

    def slow(items):
        calls.append(list(items))
        time.sleep(0.2)
        return list(items)

    async def main():
        b = MicroBatcher(slow, max_batch_size=1, batch_timeout_s=0.0)
        b.start()
        first = asyncio.ensure_future(b.submit(1))
        await asyncio.sleep(0.01)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(b.submit(2), 0.05)  # queued behind 1, given up before its turn
        third = await b.submit(3)
        await b.stop()
        return (await first).result, third.result

    assert _run(main()) == (1, 3)
    assert calls == [[1], [3]]


def test_bad_cap_is_rejected():
    with pytest.raises(ValueError, match="max_batch_size must be >= 1"):
        MicroBatcher(list, max_batch_size=0, batch_timeout_s=0.0)


def _slow(seconds: float):
    def run(items):
        time.sleep(seconds)
        return list(items)
    return run


def test_a_full_queue_refuses_at_once_and_the_queued_items_are_answered():
    async def main():
        b = MicroBatcher(_slow(0.1), max_batch_size=1, batch_timeout_s=0.0, max_queue=3)
        b.start()
        tasks = [asyncio.ensure_future(b.submit(0))]
        await asyncio.sleep(0.02)  # 0 runs
        tasks += [asyncio.ensure_future(b.submit(i)) for i in range(1, 8)]
        await asyncio.sleep(0.02)  # three wait, four are refused
        depth_when_full = b.depth
        out = await asyncio.gather(*tasks, return_exceptions=True)
        await b.stop()
        return depth_when_full, out, b.depth

    depth_when_full, out, depth_after = _run(main())
    refused = [o for o in out if isinstance(o, QueueFullError)]
    assert depth_when_full == 3 and depth_after == 0
    assert [o.result for o in out if not isinstance(o, Exception)] == [0, 1, 2, 3]
    assert len(refused) == 4 and all(r.retry_after_s >= 1 for r in refused)
    assert "max_queue=3" in str(refused[0])


def test_an_item_waiting_past_the_queue_timeout_fails_and_the_loop_goes_on():
    async def main():
        b = MicroBatcher(_slow(0.3), max_batch_size=1, batch_timeout_s=0.0, queue_timeout_s=0.1)
        b.start()
        first = asyncio.ensure_future(b.submit(1))
        await asyncio.sleep(0.01)
        start = time.monotonic()
        with pytest.raises(QueueTimeoutError) as e:
            await b.submit(2)  # behind the 0.3 s batch, failed after 0.1 s
        waited = time.monotonic() - start
        ok = await first, await b.submit(3)
        await b.stop()
        return e.value, waited, [o.result for o in ok]

    err, waited, results = _run(main())
    assert 0.08 <= waited < 0.25 and err.retry_after_s >= 1 and "queue_timeout_s" in str(err)
    assert results == [1, 3]


def test_stop_fails_what_still_waits():
    async def main():
        b = MicroBatcher(_slow(0.2), max_batch_size=1, batch_timeout_s=0.0)
        b.start()
        tasks = [asyncio.ensure_future(b.submit(i)) for i in range(3)]
        await asyncio.sleep(0.05)
        await b.stop()
        out = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 2)
        return out, b.depth

    out, depth = _run(main())
    assert all(isinstance(o, BatcherStoppedError) for o in out) and depth == 0  # the running one too


def test_the_batch_callback_sees_every_batch():
    seen: list[tuple[int, float]] = []

    async def main():
        b = MicroBatcher(_slow(0.01), max_batch_size=4, batch_timeout_s=0.05, on_batch=lambda n, s: seen.append((n, s)))
        b.start()
        await asyncio.gather(*(b.submit(i) for i in range(6)))
        await b.stop()

    _run(main())
    assert sum(n for n, _ in seen) == 6 and all(s >= 0.01 for _, s in seen)
