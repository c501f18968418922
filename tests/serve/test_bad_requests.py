"""The front door, fuzzed: every kind of bad request is a 4xx with a one-line JSON error naming the problem,
odd but valid images are answered (upright), and the server keeps serving. All against the one session
server (conftest), so the 40-odd cases cost a few seconds."""

from __future__ import annotations

import base64
import gzip
import io
import socket
import struct
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.serve.conftest import Server


def _encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _png(side: int) -> bytes:
    return _encode(Image.fromarray(np.full((side, side, 3), 90, np.uint8)), "PNG")


def _noise(w: int, h: int, mode: str = "RGB") -> Image.Image:
    arr = np.random.default_rng(w * 7 + h).integers(0, 255, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr).convert(mode)


def _crafted_png(w: int, h: int) -> bytes:
    """A PNG of a few dozen bytes whose header declares ``w`` x ``h`` pixels (the decompression-bomb shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _multipart(data: bytes = b"") -> tuple[bytes, str]:
    """A well-formed multipart body with one image part, and its Content-Type."""
    req = httpx.Request("POST", "http://x/predict", files={"image": ("x.png", data or _png(32))})
    return req.read(), req.headers["content-type"]


def _chunks(data: bytes, size: int = 65536):
    for i in range(0, len(data), size):
        yield data[i:i + size]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


TOO_BIG = np.random.default_rng(0).bytes(300_000)  # the test server's max_upload_mb is 0.25 (262,144 bytes)
BODY, MULTIPART = _multipart()
JSON = {"content-type": "application/json"}
OK_PNG = {"image": ("x.png", _png(32))}

# id: (request kwargs, status, words in the error)
BAD = {
    # the body's kind
    "not_an_image": (dict(files={"image": ("notes.txt", b"just some text, not pixels")}), 400,
                     "not an image PIL can read"),
    "svg": (dict(files={"image": ("x.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>')}),
            400, "not an image PIL can read"),
    "pdf": (dict(files={"image": ("x.pdf", b"%PDF-1.4\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF")}), 400,
            "not an image PIL can read"),
    "wrong_content_type": (dict(content=b"raw bytes", headers={"content-type": "image/png"}), 415,
                           "unsupported Content-Type 'image/png'"),
    "no_content_type": (dict(content=b"raw bytes"), 415, "unsupported Content-Type '(none)'"),
    "text_plain": (dict(content=b"image=x", headers={"content-type": "text/plain"}), 415,
                   "unsupported Content-Type 'text/plain'"),
    "form_urlencoded": (dict(data={"image": "x.png"}), 415, "'application/x-www-form-urlencoded'"),
    "gzip_encoded": (dict(content=gzip.compress(BODY), headers={"content-type": MULTIPART, "content-encoding": "gzip"}),
                     415, "unsupported Content-Encoding 'gzip'"),
    # sizes
    "empty_file": (dict(files={"image": ("empty.png", b"")}), 400, "empty (0 bytes)"),
    "empty_body_multipart": (dict(content=b"", headers={"content-type": MULTIPART}), 400, "empty body"),
    "empty_body_json": (dict(content=b"", headers=JSON), 400, "empty body"),
    "too_large_body": (dict(files={"image": ("big.png", TOO_BIG)}), 413, "over the limit of 0.25 MB"),
    "too_large_chunked": (dict(content=_chunks(TOO_BIG), headers=JSON), 413, "over the limit of 0.25 MB"),
    "too_many_pixels": (dict(files={"image": ("wide.png", _png(600))}), 413, "600x600 = 360000 pixels"),
    "decompression_bomb": (dict(files={"image": ("bomb.png", _crafted_png(100_000, 100_000))}), 413,
                           "too large to decode safely"),
    "bomb_under_pil_limit": (dict(files={"image": ("bomb.png", _crafted_png(20_000, 5_000))}), 413,
                             "20000x5000 = 100000000 pixels is over the limit"),
    # broken files
    "truncated_png": (dict(files={"image": ("cut.png", _png(64)[:60])}), 400, "cannot decode the image"),
    "truncated_jpeg": (dict(files={"image": ("cut.jpg", _encode(_noise(64, 64), "JPEG")[:300])}), 400,
                       "cannot decode the image"),
    "zero_size_png": (dict(files={"image": ("zero.png", _crafted_png(0, 0))}), 400, "not an image PIL can read"),
    # multipart
    "wrong_field": (dict(files={"file": ("x.png", _png(32))}), 422, "field 'image' missing (fields sent: ['file'])"),
    "text_field": (dict(data={"image": "x.png"}, files={"other": ("x.png", b"1")}), 422, "must be a file upload"),
    "two_images": (dict(files=[("image", ("a.png", _png(32))), ("image", ("b.png", _png(32)))]), 422,
                   "sent 2 times"),
    "truncated_multipart": (dict(content=BODY[:len(BODY) // 2], headers={"content-type": MULTIPART}), 400,
                            "malformed multipart body (no closing boundary"),
    "multipart_no_boundary": (dict(content=BODY, headers={"content-type": "multipart/form-data"}), 400,
                              "Missing boundary"),
    "multipart_wrong_boundary": (dict(content=BODY, headers={"content-type": "multipart/form-data; boundary=zz"}),
                                 400, "no closing boundary '--zz--'"),
    "too_many_fields": (dict(data={f"f{i}": "1" for i in range(20)}, files=OK_PNG), 400, "Too many fields"),
    # JSON
    "json_wrong_field": (dict(json={"img": "abc"}), 422, "JSON field 'image' missing (fields sent: ['img'])"),
    "json_not_string": (dict(json={"image": [1, 2]}), 422, "must be a base64 string, got list"),
    "json_null_image": (dict(json={"image": None}), 422, "must be a base64 string, got NoneType"),
    "json_not_object": (dict(json=[1, 2]), 422, "must be an object"),
    "json_unknown_field": (dict(json={"image": _b64(_png(8)), "colour": "red"}), 422,
                           "unknown JSON field(s) ['colour']"),
    "json_file_name_not_string": (dict(json={"image": _b64(_png(8)), "file_name": 7}), 422,
                                  "'file_name' must be a string, got int"),
    "json_empty_image": (dict(json={"image": ""}), 400, "empty (0 bytes)"),
    "bad_json": (dict(content=b"{not json", headers=JSON), 400, "not valid JSON"),
    "json_not_utf8": (dict(content=b'{"image": "\xff\xfe"}', headers=JSON), 400, "not valid JSON"),
    "json_nested_deep": (dict(content=b"[" * 100_000, headers=JSON), 400, "nested too deeply"),
    "bad_base64": (dict(json={"image": "not base64 !!"}), 400, "not valid base64"),
    "data_url_garbage": (dict(json={"image": "data:image/png;base64,@@@@"}), 400, "not valid base64"),
    "base64_not_an_image": (dict(json={"image": _b64(b"hello")}), 400, "not an image"),
    "base64_truncated_png": (dict(json={"image": _b64(_png(64)[:80])}), 400, "cannot decode the image"),
    # query and headers
    "bad_query_value": (dict(params={"overlay": "maybe"}, files=OK_PNG), 422, "query.overlay"),
    "bad_masks_value": (dict(params={"masks": "perhaps"}, files=OK_PNG), 422, "query.masks"),
    "unknown_query_option": (dict(params={"overlay": "true", "format": "xml"}, files=OK_PNG), 422,
                             "unknown query option(s) ['format']"),
    "long_headers": (dict(headers={"x-padding": "a" * 9000}, files=OK_PNG), 431,
                     "over the limit of 8192 (max_header_bytes)"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_request_is_a_clear_4xx(server, case):
    kwargs, status, words = BAD[case]
    r = httpx.post(f"{server.url}/predict", timeout=30, **kwargs)
    assert r.status_code == status, (r.status_code, r.text)
    error = r.json()["error"]
    assert words in error and "\n" not in error and "Traceback" not in error, error
    assert r.headers["x-request-id"]


def test_there_are_thirty_kinds():
    assert len(BAD) >= 30 and {status for _, status, _ in BAD.values()} == {400, 413, 415, 422, 431}


@pytest.mark.parametrize("method, path, status", [("GET", "/predict", 405), ("GET", "/no/such/page", 404),
                                                  ("POST", "/info", 405), ("PUT", "/predict", 405),
                                                  ("GET", "/../../etc/passwd", 404)])
def test_wrong_route_or_method_is_json(server, method, path, status):
    r = httpx.request(method, f"{server.url}{path}")
    assert r.status_code == status and "error" in r.json()


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (40, 30), c) for c in ((200, 0, 0), (0, 200, 0), (0, 0, 200))]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def _exif_rotated_jpeg() -> bytes:
    """Stored 48 wide and 24 high, with EXIF orientation 6 (display rotated 90 degrees): 24 x 48 upright."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(_noise(48, 24), "JPEG", exif=exif.tobytes())


def _palette_with_transparency() -> bytes:
    im = _noise(32, 32).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return _encode(im, "PNG", transparency=0)


def _sixteen_bit(fmt: str) -> bytes:
    arr = (np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 50)
    im = Image.fromarray(arr)  # uint16 -> mode I;16
    assert im.mode == "I;16"
    return _encode(im, fmt)


def _cmyk_jpeg() -> bytes:
    return _encode(_noise(40, 30).convert("CMYK"), "JPEG")


# id: (file bytes, (width, height) the answer reports)
ODD = {
    "png_16bit": (_sixteen_bit("PNG"), (40, 30)),
    "tiff_16bit": (_sixteen_bit("TIFF"), (40, 30)),
    "cmyk_jpeg": (_cmyk_jpeg(), (40, 30)),
    "palette_transparency": (_palette_with_transparency(), (32, 32)),
    "grey_alpha": (_encode(_noise(20, 10, "LA"), "PNG"), (20, 10)),
    "rgba": (_encode(_noise(20, 10, "RGBA"), "PNG"), (20, 10)),
    "grey_jpeg": (_encode(_noise(20, 10, "L"), "JPEG"), (20, 10)),
    "animated_gif": (_animated_gif(), (40, 30)),
    "exif_rotated_jpeg": (_exif_rotated_jpeg(), (24, 48)),
    "webp": (_encode(_noise(20, 10), "WEBP"), (20, 10)),
    "bmp": (_encode(_noise(20, 10), "BMP"), (20, 10)),
    "one_pixel": (_encode(_noise(1, 1), "PNG"), (1, 1)),
    "thin_but_letterboxable": (_encode(_noise(300, 6), "PNG"), (300, 6)),
}
EXTREME = {"wide_6000x1": (_encode(_noise(6000, 1), "PNG"), (6000, 1)),
           "tall_1x6000": (_encode(_noise(1, 6000), "PNG"), (1, 6000)),
           "thin_600x2": (_encode(_noise(600, 2), "PNG"), (600, 2))}  # 2 px -> 0.2 px at the test model's 64


def _check_answered(server: Server, data: bytes, size: tuple[int, int], name: str) -> None:
    r = httpx.post(f"{server.url}/predict", files={"image": (name, data)}, params={"masks": "false"}, timeout=30)
    assert r.status_code == 200, r.text
    entry = r.json()["image"]
    assert (entry["width"], entry["height"]) == size  # as displayed: EXIF rotation applied


@pytest.mark.parametrize("case", list(ODD), ids=list(ODD))
def test_odd_but_valid_images_are_answered(server, case):
    data, size = ODD[case]
    _check_answered(server, data, size, case)


@pytest.mark.parametrize("case", list(EXTREME), ids=list(EXTREME))
def test_extreme_aspect_ratios_are_answered(server, case):
    data, size = EXTREME[case]
    _check_answered(server, data, size, case)


def test_huge_headers_are_dropped_by_the_http_layer_and_the_server_goes_on(server):
    """Over 4x max_header_bytes the request never reaches the app: uvicorn answers a plain-text 431 and closes."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 40_000 + b"\r\n\r\n")
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 431"), reply[:200]
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_server_is_alive_after_the_bad_requests(server, sample_image):
    with httpx.Client(base_url=server.url, timeout=30) as client:  # one keep-alive connection throughout
        for kwargs, _, _ in list(BAD.values())[:10]:
            client.post("/predict", **kwargs)
        assert client.get("/health").status_code == 200
        r = client.post("/predict", files={"image": ("ok.png", sample_image.read_bytes())})
    assert r.status_code == 200, r.text
    assert server.process.poll() is None
    tracebacks = server.log_tail(1_000_000).split("Traceback (most recent call last):")[1:]
    assert not tracebacks, tracebacks
