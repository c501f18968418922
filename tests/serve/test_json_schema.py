"""Property-based requests over the JSON body's schema (Hypothesis): whatever JSON arrives, the answer is 200
exactly when it is a valid request (an object with a base64 image and at most a string file_name), and
otherwise a 4xx with a one-line JSON error; never a 5xx. Against the session server (conftest)."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.serve.conftest import Server


def _png_b64() -> str:
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 120, np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


IMAGE = _png_b64()
VALID_IMAGES = (IMAGE, "data:image/png;base64," + IMAGE, IMAGE[:20] + "\n" + IMAGE[20:])  # whitespace is allowed

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8)
image_values = st.sampled_from(VALID_IMAGES) | st.text(max_size=40) | \
    st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()) | json_values
requests = st.one_of(
    st.fixed_dictionaries({"image": st.sampled_from(VALID_IMAGES)},  # valid, or nearly
                          optional={"file_name": st.text(max_size=30) | st.none() | st.integers()}),
    json_values,
    st.fixed_dictionaries({"image": image_values}, optional={"file_name": st.text(max_size=30) | json_values}),
    st.tuples(st.fixed_dictionaries({"image": image_values}),  # with extra fields
              st.dictionaries(st.text(max_size=10), json_values, min_size=1, max_size=2)
              ).map(lambda t: {**t[1], **t[0]}),
)


def valid(payload: object) -> bool:
    """The schema: {"image": <base64 of an image>, "file_name": <string or null, optional>}, nothing else."""
    return (isinstance(payload, dict) and set(payload) <= {"image", "file_name"}
            and payload.get("image") in VALID_IMAGES and isinstance(payload.get("file_name"), str | None))


@pytest.fixture(scope="module")
def client(server: Server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@settings(max_examples=80, deadline=None, database=None)
@given(payload=requests)
def test_any_json_is_answered_200_exactly_when_valid(client, payload):
    r = client.post("/predict", content=json.dumps(payload).encode(), params={"masks": "false"},
                    headers={"content-type": "application/json"})  # json=None would send no body at all
    event(f"HTTP {r.status_code}")  # pytest --hypothesis-show-statistics: how often each answer came
    if valid(payload):
        assert r.status_code == 200, (payload, r.text)
        assert r.json()["image"]["file_name"] == payload.get("file_name") and r.json()["image"]["width"] == 16
    else:
        assert r.status_code in (400, 422), (payload, r.status_code, r.text)
        error = r.json()["error"]
        assert error and "\n" not in error and "Traceback" not in error, error


def test_the_service_is_healthy_after_the_examples(client, server):
    assert client.get("/health").status_code == 200 and server.process.poll() is None
