"""Every kind of bad request is a 4xx with a one-line JSON error, and the server keeps serving."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image


def _png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((side, side, 3), 90, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _chunks(data: bytes, size: int = 65536):
    for i in range(0, len(data), size):
        yield data[i:i + size]


TOO_BIG = np.random.default_rng(0).bytes(300_000)  # the test server's max_upload_mb is 0.25 (262,144 bytes)

# id: (request kwargs, status, words in the error)
BAD = {
    "not_an_image": (dict(files={"image": ("notes.txt", b"just some text, not pixels")}), 400,
                     "not an image PIL can read"),
    "empty_file": (dict(files={"image": ("empty.png", b"")}), 400, "empty (0 bytes)"),
    "truncated_png": (dict(files={"image": ("cut.png", _png(64)[:60])}), 400, "cannot decode the image"),
    "too_large_body": (dict(files={"image": ("big.png", TOO_BIG)}), 413, "over the limit of 0.25 MB"),
    "too_large_chunked": (dict(content=_chunks(TOO_BIG), headers={"content-type": "application/json"}), 413,
                          "over the limit of 0.25 MB"),
    "too_many_pixels": (dict(files={"image": ("wide.png", _png(600))}), 413, "600x600 = 360000 pixels"),
    "wrong_field": (dict(files={"file": ("x.png", _png(32))}), 422, "field 'image' missing (fields sent: ['file'])"),
    "text_field": (dict(data={"image": "x.png"}, files={"other": ("x.png", b"1")}), 422, "must be a file upload"),
    "json_wrong_field": (dict(json={"img": "abc"}), 422, "JSON field 'image' missing (fields sent: ['img'])"),
    "json_not_string": (dict(json={"image": [1, 2]}), 422, "must be a base64 string, got list"),
    "json_not_object": (dict(json=[1, 2]), 422, "must be an object"),
    "bad_base64": (dict(json={"image": "not base64 !!"}), 400, "not valid base64"),
    "bad_json": (dict(content=b"{not json", headers={"content-type": "application/json"}), 400,
                 "not valid JSON"),
    "base64_not_an_image": (dict(json={"image": base64.b64encode(b"hello").decode()}), 400, "not an image"),
    "wrong_content_type": (dict(content=b"raw bytes", headers={"content-type": "image/png"}), 415,
                           "unsupported Content-Type 'image/png'"),
    "bad_query_value": (dict(params={"overlay": "maybe"}, files={"image": ("x.png", _png(32))}), 422,
                        "query.overlay"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_request_is_a_clear_4xx(server, case):
    kwargs, status, words = BAD[case]
    r = httpx.post(f"{server.url}/predict", timeout=30, **kwargs)
    assert r.status_code == status, (r.status_code, r.text)
    error = r.json()["error"]
    assert words in error and "\n" not in error, error


@pytest.mark.parametrize("method, path, status", [("GET", "/predict", 405), ("GET", "/no/such/page", 404),
                                                  ("POST", "/info", 405)])
def test_wrong_route_or_method_is_json(server, method, path, status):
    r = httpx.request(method, f"{server.url}{path}")
    assert r.status_code == status and "error" in r.json()


def test_server_is_alive_after_the_bad_requests(server, sample_image):
    assert httpx.get(f"{server.url}/health").status_code == 200
    r = httpx.post(f"{server.url}/predict", files={"image": ("ok.png", sample_image.read_bytes())})
    assert r.status_code == 200, r.text
    assert server.process.poll() is None
    assert "Traceback" not in server.log_tail(100_000)
