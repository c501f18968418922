"""The real ``fourm21-serve`` process overloaded and stopped: a flood on a tiny queue gets 429s at once (not
latency), and SIGTERM with requests in flight answers every one of them 200 and exits 0. Each test starts its
own server (the second one ends it)."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest

from tests.serve.conftest import Server, started_server
from tests.serve.test_metrics import scrape, value

BASE_ARGS = ["score_thr=0.0", "max_det=5", "num_threads=1", "log_level=warning", "request_timeout_s=30"]


@pytest.fixture
def serve(tiny_run, tmp_path) -> Callable[..., AbstractContextManager[Server]]:
    """``serve(*args)``: a fresh ``fourm21-serve`` over the session's checkpoint, as a context manager."""
    work, run_dir, _ = tiny_run

    def start(*args: str) -> AbstractContextManager[Server]:
        return started_server([sys.executable, "-m", "fourm21.engine.serve"], run_dir / "checkpoints" / "best.ckpt",
                              work, tmp_path, *BASE_ARGS, *args)
    return start


async def _send(url: str, data: bytes, n: int) -> list[tuple[int, float, httpx.Response]]:
    """``n`` requests at once, each on its own connection: (status, seconds, response)."""
    async def one(client: httpx.AsyncClient, i: int) -> tuple[int, float, httpx.Response]:
        start = time.monotonic()
        r = await client.post("/predict", files={"image": (f"{i}.png", data)}, params={"masks": "false"})
        return r.status_code, time.monotonic() - start, r

    limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        return await asyncio.gather(*(one(client, i) for i in range(n)))


def test_a_flood_on_a_tiny_queue_gets_429_at_once(serve, sample_image: Path):
    # a batch forms for 1 s: the first 4 images wait in it, the rest find the queue full
    with serve("max_queue=4", "max_batch_size=16", "batch_timeout_s=1.0") as srv:
        out = asyncio.run(_send(srv.url, sample_image.read_bytes(), 24))
        after = httpx.post(f"{srv.url}/predict", files={"image": ("after.png", sample_image.read_bytes())})
        metrics = scrape(srv.url)
    statuses = [s for s, _, _ in out]
    assert set(statuses) == {200, 429} and statuses.count(200) >= 4 and statuses.count(429) >= 10, statuses
    for status, seconds, r in out:
        if status == 429:
            assert seconds < 1.0, seconds  # refused at once, not after waiting for a batch
            assert int(r.headers["retry-after"]) >= 1 and "max_queue=4" in r.json()["error"]
            assert r.headers["x-request-id"]
    assert after.status_code == 200, after.text
    assert value(metrics, "fourm21_http_requests_total", route="/predict", method="POST", status="429") == \
        statuses.count(429)


def test_sigterm_answers_the_requests_in_flight_then_exits_0(serve, sample_image: Path):
    n = 12

    async def main(srv: Server) -> list[tuple[int, float, httpx.Response]]:
        sending = asyncio.ensure_future(_send(srv.url, sample_image.read_bytes(), n))
        deadline = time.monotonic() + 20
        async with httpx.AsyncClient(base_url=srv.url, timeout=10) as probe:
            while True:  # every request is in the batch still forming (2 s) before the signal
                text = (await probe.get("/metrics")).text
                if f"fourm21_queue_depth {n}.0" in text:
                    break
                assert time.monotonic() < deadline and not sending.done(), text[-2000:]
                await asyncio.sleep(0.05)
        srv.process.send_signal(signal.SIGTERM)
        return await sending

    with serve("max_batch_size=16", "batch_timeout_s=2.0") as srv:
        out = asyncio.run(main(srv))
        code = srv.process.wait(timeout=30)
        log = srv.log_tail(100_000)
    assert [s for s, _, _ in out] == [200] * n, [r.text for _, _, r in out]
    assert sorted(r.json()["image"]["file_name"] for _, _, r in out) == sorted(f"{i}.png" for i in range(n))
    assert code == 0, log
    assert "Traceback" not in log
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{srv.url}/health", timeout=2)

