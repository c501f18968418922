"""What an operator sees of the service: Prometheus metrics, a request id on every response and log line,
and the last-resort 500 that keeps a failing request from breaking its keep-alive connection.

``RequestMiddleware`` wraps the whole app (a plain ASGI middleware, so uploads stream through it): it
takes the client's ``X-Request-ID`` when it is sane or makes one, answers over-long headers with 431,
counts and times every request by route template (unknown paths share one label, so a scanner cannot
grow the metrics), and writes one access line per request with the id.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse

from fourm21.errors import one_line

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REQUEST_ID_HEADER = "x-request-id"
SANE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")  # echoed into headers and logs: nothing that could inject
ERROR_KEY = "fourm21.error"  # scope key where the error handlers leave their message for the access line
UNMATCHED = "unmatched"  # the route label of every path no route serves
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST

log = logging.getLogger("fourm21.serve")


class ServeMetrics:
    """The service's Prometheus metrics in a registry of its own (several apps in one process stay apart)."""

    def __init__(self, max_batch_size: int) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total, open fds
        self.requests = Counter("fourm21_http_requests", "HTTP requests answered, by route template, method and "
                                "status", ["route", "method", "status"], registry=r)
        self.latency = Histogram("fourm21_http_request_duration_seconds", "Time from request to the last byte "
                                 "of the answer, by route template", ["route"], buckets=LATENCY_BUCKETS_S,
                                 registry=r)
        self.in_flight = Gauge("fourm21_http_requests_in_flight", "Requests received and not yet answered",
                               registry=r)
        self.queue_depth = Gauge("fourm21_queue_depth", "Requests admitted and waiting for the model (being "
                                 "decoded, queued, or in a batch still forming): what max_queue bounds", registry=r)
        self.batch_size = Histogram("fourm21_batch_size", "Images per forward pass", registry=r,
                                    buckets=_batch_buckets(max_batch_size))
        self.batch_seconds = Histogram("fourm21_batch_duration_seconds", "Time of one forward pass with its "
                                       "pre- and post-processing", buckets=LATENCY_BUCKETS_S, registry=r)
        self.model_load = Gauge("fourm21_model_load_seconds", "Seconds fourm21.load took at start", registry=r)
        self.model = Info("fourm21_model", "The model served", registry=r)

    def on_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _batch_buckets(max_batch_size: int) -> tuple[float, ...]:
    """Every size up to 16, then powers of two, ending at ``max_batch_size``."""
    sizes = list(range(1, min(max_batch_size, 16) + 1))
    while sizes[-1] < max_batch_size:
        sizes.append(min(sizes[-1] * 2, max_batch_size))
    return tuple(float(s) for s in sizes)


def request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's ``X-Request-ID`` when it is 1-128 characters of ``A-Za-z0-9._:-``, else a new uuid4 hex."""
    for key, value in headers:
        if key.lower() == REQUEST_ID_HEADER.encode():
            text = value.decode("latin-1")
            if SANE_ID.fullmatch(text):
                return text
            break
    return uuid.uuid4().hex


def _route(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or UNMATCHED


class RequestMiddleware:
    """Request id, header-size limit, metrics, the access log line and the last-resort JSON 500 (see module)."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics, max_header_bytes: int) -> None:
        self.app, self.metrics, self.max_header_bytes = app, metrics, max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(scope.get("headers", []))
        scope.setdefault("state", {})["request_id"] = rid
        status, started = 500, False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started, status = True, int(message["status"])
                message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER.encode(), rid.encode())]
            await send(message)

        start = time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            header_bytes = sum(len(k) + len(v) + 4 for k, v in scope.get("headers", []))
            if header_bytes > self.max_header_bytes:
                message = (f"request headers of {header_bytes} bytes are over the limit of "
                           f"{self.max_header_bytes} (max_header_bytes)")
                scope[ERROR_KEY] = message
                await JSONResponse({"error": message}, status_code=431)(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        except Exception as exc:
            log.error("request %s failed", rid, exc_info=exc)
            if started:  # half an answer is out: only closing the connection tells the client
                raise
            scope[ERROR_KEY] = f"internal error: {one_line(exc)}"
            await JSONResponse({"error": scope[ERROR_KEY]}, status_code=500)(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - start
            route, method = _route(scope), scope.get("method", "")
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route).observe(seconds)
            client = scope.get("client") or ("-", 0)
            error = scope.get(ERROR_KEY)
            log.log(logging.WARNING if status >= 500 else logging.INFO,
                    '%s "%s %s" %d %.1f ms request_id=%s%s', client[0], method, scope.get("path", ""), status,
                    seconds * 1e3, rid, f" error={error!r}" if error else "")
