"""``GET /metrics`` read by Prometheus's own text parser, its counters moving with the requests, and the request
id on every response; against the session's ``fourm21-serve`` process (conftest)."""

from __future__ import annotations

import re

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """Every sample of ``/metrics``: {(name, sorted labels): value}."""
    r = httpx.get(f"{url}/metrics", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text[:300]
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_the_counters_move_with_the_requests(server, sample_image):
    before = scrape(server.url)
    files = {"image": (sample_image.name, sample_image.read_bytes())}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert [client.post("/predict", files=files).status_code for _ in range(3)] == [200] * 3
        assert client.post("/predict", content=b"x", headers={"content-type": "text/plain"}).status_code == 415
        assert client.get("/no/such/page").status_code == 404
        assert client.get("/another/unknown").status_code == 404
    after = scrape(server.url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("fourm21_http_requests_total", route="/predict", method="POST", status="200") == 3
    assert delta("fourm21_http_requests_total", route="/predict", method="POST", status="415") == 1
    assert delta("fourm21_http_requests_total", route="unmatched", method="GET", status="404") == 2  # one label
    assert delta("fourm21_http_requests_total", route="/metrics", method="GET", status="200") == 1
    assert delta("fourm21_http_request_duration_seconds_count", route="/predict") == 4
    assert delta("fourm21_http_request_duration_seconds_sum", route="/predict") > 0
    assert delta("fourm21_http_request_duration_seconds_bucket", route="/predict", le="+Inf") == 4
    # one client, one request at a time: each forms a batch of its own
    assert delta("fourm21_batch_size_count") == 3 and delta("fourm21_batch_size_sum") == 3
    assert delta("fourm21_batch_duration_seconds_count") == delta("fourm21_batch_size_count")
    assert value(after, "fourm21_batch_size_bucket", le="8.0") == value(after, "fourm21_batch_size_count")
    assert value(after, "fourm21_queue_depth") == 0
    assert value(after, "fourm21_http_requests_in_flight") == 1  # the scrape itself
    assert 0 < value(after, "fourm21_model_load_seconds") < 60
    assert value(after, "process_resident_memory_bytes") > 50e6
    (info,) = [k for k in after if k[0] == "fourm21_model_info"]
    assert dict(info[1])["heads"] == "cls,det,inst,sem" and dict(info[1])["model"].endswith("best.ckpt")


@pytest.mark.parametrize("sent, echoed", [(None, False), ("deploy-42.a:b_C", True), ("has spaces", False),
                                          ("x" * 129, False), ("<script>", False)])
def test_every_response_carries_a_request_id(server, sent, echoed):
    headers = {"x-request-id": sent} if sent is not None else {}
    got = [httpx.get(f"{server.url}{path}", headers=headers).headers.get("x-request-id")
           for path in ("/health", "/no/such/page")]
    if echoed:
        assert got == [sent, sent]
    else:
        assert all(re.fullmatch(r"[0-9a-f]{32}", g or "") for g in got) and got[0] != got[1], got
    r = httpx.post(f"{server.url}/predict", content=b"x", headers={**headers, "content-type": "text/plain"})
    assert r.status_code == 415 and (r.headers["x-request-id"] == sent) == echoed
