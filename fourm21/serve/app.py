"""The FastAPI app: ``POST /predict``, ``GET /health``, ``GET /info`` and the upload page at ``/``.

Every request error is a 4xx with ``{"error": "<one line>"}``; a failure inside the model is a 500
with the same shape, logged with its traceback, and the server keeps serving.
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
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException

from fourm21.errors import one_line
from fourm21.serve.batcher import MicroBatcher
from fourm21.serve.inputs import RequestError, Upload, decode_image, read_upload
from fourm21.serve.results import overlay_png_base64, prediction_json
from fourm21.serve.settings import ServeSettings

if TYPE_CHECKING:
    from fourm21.inference.model import Fourm21Model

log = logging.getLogger(__name__)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(model: Fourm21Model, settings: ServeSettings, model_path: str = "") -> FastAPI:
    """The service over a loaded model; requests are micro-batched into ``model.predict`` calls.
    The model's thresholds are set here from ``settings``, so ``/info`` reports what is in force."""
    model.set_thresholds(**settings.decode)
    page = files("fourm21.serve").joinpath("index.html").read_text(encoding="utf-8")

    def run_batch(images: Sequence[np.ndarray]) -> list[dict[str, torch.Tensor]]:
        return model.predict(list(images), batch_size=len(images), img_size=settings.img_size)

    batcher: MicroBatcher[np.ndarray, dict[str, torch.Tensor]] = MicroBatcher(
        run_batch, settings.max_batch_size, settings.batch_timeout_s)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="fourm21", summary="multitask vision predictions over HTTP", lifespan=lifespan)
    app.state.batcher = batcher

    @app.exception_handler(RequestError)
    async def request_error(_: Request, exc: RequestError) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid_parameter(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return _error(422, problems or "invalid request")

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        log.error("request failed", exc_info=exc)
        return _error(500, f"internal error: {one_line(exc)}")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/info")
    async def info() -> dict:
        cat_ids = model.meta.get("cat_ids") or list(range(1, len(model.class_names) + 1))
        return {"model": model_path, "heads": list(model.heads),
                "class_names": model.class_names, "image_class_names": model.image_class_names,
                "categories": [{"id": c, "name": n} for c, n in zip(cat_ids, model.class_names)],
                "img_size": settings.img_size or model.img_size,
                "thresholds": settings.thresholds,
                "limits": {"max_upload_mb": settings.max_upload_mb, "max_image_pixels": settings.max_image_pixels,
                           "request_timeout_s": settings.request_timeout_s},
                "batching": {"max_batch_size": settings.max_batch_size, "batch_timeout_s": settings.batch_timeout_s,
                             **batcher.stats.as_dict()}}

    async def answer(upload: Upload, overlay: bool, masks: bool) -> dict:
        start = time.perf_counter()
        image = await asyncio.to_thread(decode_image, upload, settings.max_image_pixels)
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
        return JSONResponse(out)

    return app
