"""The FastAPI app: ``POST /predict``, ``GET /health``, ``GET /info``, ``GET /metrics`` and the upload page at ``/``.

Every request error is a 4xx with ``{"error": "<one line>"}``; overload is a 429 (queue full) or 503
(queue timeout, shutting down) with ``Retry-After``, a request past ``request_timeout_s`` a 504, and a
failure inside the model a 500 with the same shape, logged with its traceback; the server keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import TYPE_CHECKING

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from fourm21.serve.batcher import BatcherStoppedError, MicroBatcher, QueueFullError, QueueTimeoutError
from fourm21.serve.inputs import RequestError, Upload, decode_image, read_upload
from fourm21.serve.observe import ERROR_KEY, METRICS_CONTENT_TYPE, RequestMiddleware, ServeMetrics
from fourm21.serve.results import overlay_png_base64, prediction_json
from fourm21.serve.settings import ServeSettings

if TYPE_CHECKING:
    from fourm21.inference.model import Fourm21Model

log = logging.getLogger(__name__)

QUERY_OPTIONS = ("overlay", "masks")  # POST /predict's query parameters; any other is a 422


def _error(request: Request, status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    request.scope[ERROR_KEY] = message  # for the access log line
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def create_app(model: Fourm21Model, settings: ServeSettings, model_path: str = "",
               load_seconds: float | None = None) -> FastAPI:
    """The service over a loaded model; requests are micro-batched into ``model.predict`` calls.
    The model's thresholds are set here from ``settings``, so ``/info`` reports what is in force.
    ``load_seconds``: how long loading took (the ``fourm21_model_load_seconds`` metric)."""
    model.set_thresholds(**settings.decode)
    page = files("fourm21.serve").joinpath("index.html").read_text(encoding="utf-8")
    metrics = ServeMetrics(settings.max_batch_size)
    if load_seconds is not None:
        metrics.model_load.set(load_seconds)
    metrics.model.info({"model": model_path, "heads": ",".join(model.heads)})

    def run_batch(images: Sequence[np.ndarray]) -> list[dict[str, torch.Tensor]]:
        return model.predict(list(images), batch_size=len(images), img_size=settings.img_size)

    batcher: MicroBatcher[np.ndarray, dict[str, torch.Tensor]] = MicroBatcher(
        run_batch, settings.max_batch_size, settings.batch_timeout_s, max_queue=settings.max_queue,
        queue_timeout_s=settings.queue_timeout_s, on_batch=metrics.on_batch)
    decoding = 0  # requests admitted (upload read) whose image is being decoded: they count in the queue

    def queued() -> int:
        """Requests admitted and waiting for the model: being decoded, or in the batcher's queue."""
        return decoding + batcher.depth

    metrics.queue_depth.set_function(queued)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()  # after uvicorn answered every accepted request; anything left gets a 503

    app = FastAPI(title="fourm21", summary="multitask vision predictions over HTTP", lifespan=lifespan)
    app.state.batcher, app.state.metrics = batcher, metrics
    app.add_middleware(RequestMiddleware, metrics=metrics, max_header_bytes=settings.max_header_bytes)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError) -> JSONResponse:
        return _error(request, exc.status, exc.message, exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(request, exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid_parameter(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return _error(request, 422, problems or "invalid request")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=METRICS_CONTENT_TYPE)

    @app.get("/info")
    async def info() -> dict:
        cat_ids = model.meta.get("cat_ids") or list(range(1, len(model.class_names) + 1))
        return {"model": model_path, "heads": list(model.heads),
                "class_names": model.class_names, "image_class_names": model.image_class_names,
                "categories": [{"id": c, "name": n} for c, n in zip(cat_ids, model.class_names)],
                "img_size": settings.img_size or model.img_size,
                "thresholds": settings.thresholds,
                "limits": {"max_upload_mb": settings.max_upload_mb, "max_image_pixels": settings.max_image_pixels,
                           "request_timeout_s": settings.request_timeout_s, "max_queue": settings.max_queue,
                           "queue_timeout_s": settings.queue_timeout_s,
                           "max_header_bytes": settings.max_header_bytes},
                "batching": {"max_batch_size": settings.max_batch_size, "batch_timeout_s": settings.batch_timeout_s,
                             "queue_depth": queued(), **batcher.stats.as_dict()}}

    def overloaded(e: QueueFullError | QueueTimeoutError | BatcherStoppedError) -> RequestError:
        if isinstance(e, QueueFullError):
            return RequestError(429, str(e), {"Retry-After": str(e.retry_after_s)})
        if isinstance(e, QueueTimeoutError):
            return RequestError(503, f"service overloaded: {e}", {"Retry-After": str(e.retry_after_s)})
        return RequestError(503, f"service unavailable: {e}", {"Retry-After": "1"})

    async def answer(upload: Upload, overlay: bool, masks: bool) -> dict:
        nonlocal decoding
        start = time.perf_counter()
        if queued() >= settings.max_queue:  # refused before decoding: under a flood that is work thrown away
            raise QueueFullError(queued(), settings.max_queue, batcher.retry_after_s(queued()))
        decoding += 1
        try:
            image = await asyncio.to_thread(decode_image, upload, settings.max_image_pixels)
        finally:
            decoding -= 1
        done = await batcher.submit(image)
        pred = done.result

        def build() -> dict:
            out = prediction_json(pred, model, image, upload.file_name, masks)
            if overlay:
                out["overlay_png"] = overlay_png_base64(pred, model, image, settings.score_thr,
                                                        settings.show_semantic)
            return out

        out = await asyncio.to_thread(build)
        out["server"] = {"batch_size": done.batch_size, "seconds": round(time.perf_counter() - start, 4)}
        return out

    @app.post("/predict")
    async def predict(request: Request, overlay: bool = False, masks: bool | None = None) -> JSONResponse:
        """An image (multipart field ``image`` or JSON base64) -> its predictions as ``fourm21-predict``
        writes them; ``overlay=true`` adds ``overlay_png`` (base64), ``masks=false`` drops the RLE masks."""
        unknown = sorted(set(request.query_params) - set(QUERY_OPTIONS))
        if unknown:
            raise RequestError(422, f"unknown query option(s) {unknown}: the options are {list(QUERY_OPTIONS)}")
        timeout = settings.request_timeout_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            upload = await asyncio.wait_for(read_upload(request, settings.max_upload_bytes), timeout)
        except asyncio.TimeoutError:
            raise RequestError(408, f"upload not received within request_timeout_s={timeout}") from None
        try:
            out = await asyncio.wait_for(answer(upload, overlay, settings.masks if masks is None else masks),
                                         max(deadline - loop.time(), 1e-3))
        except asyncio.TimeoutError:
            raise RequestError(504, f"prediction not finished within request_timeout_s={timeout}; the server is "
                                    "busy or the image is large") from None
        except (QueueFullError, QueueTimeoutError, BatcherStoppedError) as e:
            raise overloaded(e) from None
        return JSONResponse(out)

    return app
