"""From an HTTP request to an (H, W, 3) uint8 RGB image, or a ``RequestError`` saying what was wrong.

Two ways to send an image: multipart/form-data with a file field ``image`` (``curl -F image=@x.jpg``),
or JSON ``{"image": "<base64>", "file_name": "x.jpg"}`` (a ``data:image/...;base64,`` prefix is allowed).
The body is read up to ``max_bytes`` and no further, so an oversized upload never fills memory.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from fourm21.data.images import to_rgb

FIELD = "image"
JSON_FIELDS = (FIELD, "file_name")  # the JSON body's schema: any other field is a 422
USAGE = (f"send multipart/form-data with a file field '{FIELD}', or application/json "
         f'{{"{FIELD}": "<base64>"}}')


class RequestError(Exception):
    """A bad request: answered with ``status`` and ``{"error": message}``; the server carries on."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


@dataclass(frozen=True)
class Upload:
    """What a request sent: the encoded image and its name (None when the client gave none)."""

    data: bytes
    file_name: str | None


def _mb(n: int) -> str:
    return f"{n / 2**20:.2f} MB"


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it (declared or streamed) passes ``max_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RequestError(400, f"Content-Length header is not a number: {declared!r}")
        if int(declared) > max_bytes:
            raise RequestError(413, f"request body of {_mb(int(declared))} is over the limit of {_mb(max_bytes)} "
                                    "(max_upload_mb)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise RequestError(413, f"request body is over the limit of {_mb(max_bytes)} (max_upload_mb)")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_upload(request: Request, max_bytes: int) -> Upload:
    """The image bytes and name from a multipart or JSON request."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in ("multipart/form-data", "application/json"):
        raise RequestError(415, f"unsupported Content-Type {kind or '(none)'!r}: {USAGE}")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise RequestError(415, f"unsupported Content-Encoding {encoding!r}: send the body uncompressed")
    body = await read_body(request, max_bytes)
    if kind == "application/json":
        return _from_json(body)
    return await _from_multipart(request, body, max_bytes)


def _from_json(body: bytes) -> Upload:
    if not body:
        raise RequestError(400, f"empty body: {USAGE}")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(400, f"body is not valid JSON ({one_line_reason(e)})") from None
    except RecursionError:
        raise RequestError(400, "body is not usable JSON (nested too deeply)") from None
    if not isinstance(payload, dict):
        raise RequestError(422, f"JSON body must be an object with a field '{FIELD}', got {type(payload).__name__}")
    if FIELD not in payload:
        raise RequestError(422, f"JSON field '{FIELD}' missing (fields sent: {sorted(payload)}): {USAGE}")
    unknown = sorted(set(payload) - set(JSON_FIELDS))
    if unknown:
        raise RequestError(422, f"unknown JSON field(s) {unknown}: the fields are {list(JSON_FIELDS)}")
    text, name = payload[FIELD], payload.get("file_name")
    if not isinstance(text, str):
        raise RequestError(422, f"JSON field '{FIELD}' must be a base64 string, got {type(text).__name__}")
    if name is not None and not isinstance(name, str):
        raise RequestError(422, f"JSON field 'file_name' must be a string, got {type(name).__name__}")
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestError(400, f"JSON field '{FIELD}' is not valid base64 ({e})") from None
    return Upload(data, name)


async def _from_multipart(request: Request, body: bytes, max_bytes: int) -> Upload:
    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    if not body:
        raise RequestError(400, f"empty body: {USAGE}")
    boundary = request.headers.get("content-type", "").partition("boundary=")[2].split(";")[0].strip().strip('"')
    if boundary and not body.rstrip(b"\r\n").endswith(b"--" + boundary.encode("latin-1") + b"--"):
        # python-multipart accepts a body cut short as one with fewer fields: say what happened instead
        raise RequestError(400, f"malformed multipart body (no closing boundary '--{boundary[:70]}--': cut short, "
                                "or not the boundary its Content-Type names)")
    try:
        form = await Request(request.scope, replay).form(max_files=4, max_fields=16, max_part_size=max_bytes)
    except MultiPartException as e:
        raise RequestError(400, f"malformed multipart body ({e.message})") from None
    except HTTPException as e:  # Starlette's wrapping of a MultiPartException inside an app
        raise RequestError(400, f"malformed multipart body ({e.detail})") from None
    try:
        if FIELD not in form:
            raise RequestError(422, f"multipart field '{FIELD}' missing (fields sent: {sorted(form.keys())}): "
                                    f"{USAGE}")
        parts = form.getlist(FIELD)
        if len(parts) > 1:
            raise RequestError(422, f"multipart field '{FIELD}' sent {len(parts)} times: one image per request")
        part = parts[0]
        if not isinstance(part, UploadFile):
            raise RequestError(422, f"multipart field '{FIELD}' must be a file upload (curl -F {FIELD}=@photo.jpg), "
                                    "got a text value")
        return Upload(await part.read(), part.filename or None)
    finally:
        await form.close()


def one_line_reason(e: BaseException) -> str:
    """An exception's message on one line (a JSON error names the problem, never a traceback)."""
    text = " ".join(str(e).split())
    return text[:200] or type(e).__name__


def decode_image(upload: Upload, max_pixels: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB from any image PIL reads (EXIF rotation, alpha and 16-bit handled as in training)."""
    if not upload.data:
        raise RequestError(400, f"field '{FIELD}' is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(upload.data)) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise RequestError(413, f"image of {w}x{h} = {w * h} pixels is over the limit of {max_pixels} "
                                        "(max_image_pixels)")
            im.load()
            return to_rgb(im)
    except UnidentifiedImageError:
        head = upload.data[:8]
        raise RequestError(400, f"field '{FIELD}' is not an image PIL can read ({len(upload.data)} bytes "
                                f"starting {head!r})") from None
    except Image.DecompressionBombError as e:
        raise RequestError(413, f"image too large to decode safely ({e})") from None
    except (OSError, ValueError, SyntaxError, MemoryError, EOFError) as e:
        raise RequestError(400, f"cannot decode the image: {one_line_reason(e)}") from None
