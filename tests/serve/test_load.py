"""Concurrent load: N parallel requests are all answered, and the server ran them in shared batches."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx

N_REQUESTS = 24  # bounded: a fixed count, each with its own timeout, the whole run under a deadline


def test_parallel_requests_are_answered_in_batches(server, sample_image):
    data = sample_image.read_bytes()
    before = httpx.get(f"{server.url}/info").json()["batching"]
    start = time.monotonic()
    with httpx.Client(base_url=server.url, timeout=30, limits=httpx.Limits(max_connections=N_REQUESTS)) as client, \
            ThreadPoolExecutor(N_REQUESTS) as pool:
        responses = list(pool.map(lambda i: client.post("/predict", files={"image": (f"{i}.png", data)}),
                                  range(N_REQUESTS)))
    elapsed = time.monotonic() - start
    assert [r.status_code for r in responses] == [200] * N_REQUESTS, [r.text for r in responses if r.status_code != 200]
    assert elapsed < 30, f"{N_REQUESTS} requests took {elapsed:.1f} s"
    assert sorted(r.json()["image"]["file_name"] for r in responses) == sorted(f"{i}.png" for i in range(N_REQUESTS))
    first = responses[0].json()["annotations"]
    assert all(len(r.json()["annotations"]) == len(first) for r in responses)  # same image, same answer

    after = httpx.get(f"{server.url}/info").json()["batching"]
    assert after["images"] - before["images"] == N_REQUESTS
    batches = after["batches"] - before["batches"]
    assert batches < N_REQUESTS, f"{N_REQUESTS} requests ran in {batches} batches: nothing was batched"
    assert 2 <= after["max_batch_size_seen"] <= after["max_batch_size"]
    assert max(r.json()["server"]["batch_size"] for r in responses) >= 2
