"""The micro-batcher on its own: batching, the size cap, failure isolation and cancelled requests."""

from __future__ import annotations

import asyncio
import time

import pytest

from fourm21.serve.batcher import MicroBatcher


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
