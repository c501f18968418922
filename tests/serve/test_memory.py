"""Memory stays flat: the server's resident memory, sampled from ``/metrics`` (``process_resident_memory_bytes``)
over 200 requests in a row after a warm-up, grows by less than a stated bound. scripts/bench_serve.py runs the
full 2,000 (``--memory-requests``)."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
from PIL import Image

from tests.serve.test_metrics import scrape, value

WARMUP, REQUESTS, EVERY = 20, 200, 25
SIDE = 256  # a leak of the decoded image (192 KB) per request: 38 MB over the run, far over the bound
# measured on the 2-core AMD EPYC: 0.3-1.5 MB after the warm-up when this test runs first on its server, up to
# 10 MB after the other serve tests' requests (the allocator's arenas still settling); a leak of the decoded
# image stays well above the bound
MAX_GROWTH_MB = 16.0


def _gradient_png() -> bytes:
    ramp = np.linspace(0, 255, SIDE, dtype=np.uint8)
    buf = io.BytesIO()
    grey = np.full((SIDE, SIDE), 128, np.uint8)
    Image.fromarray(np.stack(np.broadcast_arrays(ramp[None], ramp[:, None], grey), axis=-1)).save(buf, format="PNG")
    return buf.getvalue()


def rss_mb(url: str) -> float:
    return value(scrape(url), "process_resident_memory_bytes") / 2**20


def test_rss_stays_flat_over_many_requests(server):
    data = _gradient_png()
    b64 = {"image": base64.b64encode(data).decode(), "file_name": "b64.png"}

    def send(client: httpx.Client, i: int) -> int:  # the paths a request can take: multipart, JSON, overlay, 4xx
        if i % 10 == 9:
            return client.post("/predict", content=b"junk", headers={"content-type": "text/plain"}).status_code
        if i % 2:
            return client.post("/predict", json=b64, params={"overlay": str(i % 5 == 0).lower(), "masks": "false"}
                               ).status_code
        return client.post("/predict", files={"image": (f"{i}.png", data)}, params={"masks": str(i % 4 == 0).lower()}
                           ).status_code

    with httpx.Client(base_url=server.url, timeout=30) as client:
        for i in range(WARMUP):
            send(client, i)
        samples, statuses = [rss_mb(server.url)], []
        for i in range(REQUESTS):
            statuses.append(send(client, i))
            if (i + 1) % EVERY == 0:
                samples.append(rss_mb(server.url))
    assert statuses.count(415) == REQUESTS // 10 and statuses.count(200) == REQUESTS - REQUESTS // 10
    growth = max(samples) - samples[0]
    assert growth < MAX_GROWTH_MB, f"RSS grew {growth:.1f} MB over {REQUESTS} requests: {samples}"
