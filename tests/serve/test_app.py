"""The app in-process over a stand-in model (timeouts and model failures on demand), the settings and the CLI's
one-line errors. The real model over real HTTP is in test_api.py."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from hydra import compose, initialize_config_dir
from starlette.testclient import TestClient

from fourm21.engine.common import CONFIG_DIR
from fourm21.errors import ConfigError
from fourm21.inference.decode import DecodeSettings
from fourm21.serve.app import create_app
from fourm21.serve.settings import ServeSettings
from tests.conftest import model_config

PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde\x00\x00"
       b"\x00\x0cIDATx\x9cc\xf8\xcf\xc0\x00\x00\x03\x01\x01\x00\xc9\xfe\x92\xef\x00\x00\x00\x00IEND\xaeB`\x82")


class StandIn:
    """Just what the app uses of a Fourm21Model; ``predict`` can be slow or fail."""

    class_names, image_class_names, img_size, meta, heads = ["thing"], [], 32, {"class_names": ["thing"]}, ["det"]
    settings = DecodeSettings.from_config(model_config(**{f"heads.{h}.enabled": False for h in ("cls", "inst", "sem")}))

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.delay_s, self.fail = delay_s, fail

    def set_thresholds(self, *args, **kwargs) -> None:
        pass

    def predict(self, images, batch_size=16, img_size=None):
        time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("the network fell over")
        return [{"boxes": torch.tensor([[0.0, 0.0, 1.0, 1.0]]), "scores": torch.tensor([0.9]),
                 "labels": torch.tensor([0])} for _ in images]


def settings(*overrides: str) -> ServeSettings:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return ServeSettings.from_config(compose("serve", ["ckpt_path=x.ckpt", *overrides]))


def test_the_shipped_config_is_valid():
    s = settings()
    assert s.max_upload_bytes == 10 * 2**20 and s.port == 8000 and s.thresholds["score_thr"] == 0.3


@pytest.mark.parametrize("override, words", [("max_batch_size=0", "max_batch_size: must be >= 1, got 0"),
                                             ("max_queue=0", "max_queue: must be >= 1, got 0"),
                                             ("max_queue=2.5", "max_queue: must be a whole number"),
                                             ("queue_timeout_s=0", "queue_timeout_s: must be > 0"),
                                             ("max_header_bytes=100", "max_header_bytes: must be >= 1024"),
                                             ("max_upload_mb=0", "max_upload_mb: must be > 0"),
                                             ("request_timeout_s=abc", "request_timeout_s: must be a number"),
                                             ("score_thr=2", "score_thr: must be in [0, 1], got 2"),
                                             ("port=70000", "port: must be in [0, 65535]"),
                                             ("masks=maybe", "masks: must be true or false")])
def test_bad_setting_names_its_key(override, words):
    with pytest.raises(ConfigError) as e:
        settings(override)
    assert words in str(e.value)


def test_answers_through_the_stand_in():
    with TestClient(create_app(StandIn(), settings())) as client:
        r = client.post("/predict", files={"image": ("one.png", PNG)})
    assert r.status_code == 200, r.text
    (ann,) = r.json()["annotations"]
    assert ann["category_name"] == "thing" and ann["bbox"] == [0.0, 0.0, 1.0, 1.0]


def test_a_slow_prediction_is_a_504():
    with TestClient(create_app(StandIn(delay_s=1.0), settings("request_timeout_s=0.2"))) as client:
        r = client.post("/predict", files={"image": ("one.png", PNG)})
    assert r.status_code == 504 and "request_timeout_s=0.2" in r.json()["error"]


def test_a_model_failure_is_a_json_500_and_the_app_goes_on():
    model = StandIn(fail=True)
    with TestClient(create_app(model, settings()), raise_server_exceptions=True) as client:
        r = client.post("/predict", files={"image": ("one.png", PNG)})  # answered, not raised to the server
        assert r.status_code == 500 and "the network fell over" in r.json()["error"]
        assert r.headers["x-request-id"]
        model.fail = False
        assert client.post("/predict", files={"image": ("one.png", PNG)}).status_code == 200


def _flood(client: TestClient, n: int) -> list[tuple[int, float, dict, dict]]:
    """``n`` requests at once from threads: (status, seconds, JSON, headers) each."""
    def one(i: int) -> tuple[int, float, dict, dict]:
        start = time.monotonic()
        r = client.post("/predict", files={"image": (f"{i}.png", PNG)})
        return r.status_code, time.monotonic() - start, r.json(), dict(r.headers)
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_a_full_queue_is_a_429_at_once_with_retry_after():
    app = create_app(StandIn(delay_s=0.3), settings("max_batch_size=1", "batch_timeout_s=0", "max_queue=1"))
    with TestClient(app) as client:
        out = _flood(client, 6)
        assert client.post("/predict", files={"image": ("after.png", PNG)}).status_code == 200
    statuses = sorted(s for s, *_ in out)
    assert set(statuses) == {200, 429} and statuses.count(200) >= 2, statuses
    for status, seconds, body, headers in out:
        if status == 429:
            assert seconds < 0.3, seconds  # not queued behind the model
            assert int(headers["retry-after"]) >= 1 and "max_queue=1" in body["error"]


def test_a_queue_timeout_is_a_503_with_retry_after():
    app = create_app(StandIn(delay_s=0.5), settings("max_batch_size=1", "batch_timeout_s=0", "queue_timeout_s=0.1"))
    with TestClient(app) as client:
        out = _flood(client, 3)
    assert sorted(s for s, *_ in out) == [200, 503, 503], out
    for status, seconds, body, headers in out:
        if status == 503:
            assert seconds < 0.45 and int(headers["retry-after"]) >= 1
            assert body["error"].startswith("service overloaded: waited") and "queue_timeout_s" in body["error"]


def test_the_request_id_is_in_the_log_lines(caplog):
    with caplog.at_level(logging.INFO, logger="fourm21.serve"), \
            TestClient(create_app(StandIn(), settings())) as client:
        ok = client.post("/predict", files={"image": ("one.png", PNG)}, headers={"x-request-id": "trace-1"})
        bad = client.post("/predict", content=b"x", headers={"content-type": "text/plain"})
    assert ok.status_code == 200 and ok.headers["x-request-id"] == "trace-1"
    rid = bad.headers["x-request-id"]
    lines = [r.getMessage() for r in caplog.records if r.name == "fourm21.serve"]
    assert any('"POST /predict" 200' in line and "request_id=trace-1" in line for line in lines), lines
    assert any('"POST /predict" 415' in line and f"request_id={rid}" in line and "unsupported Content-Type" in line
               for line in lines), lines


def _main(args: list[str], tmp_path) -> str:
    """The console script in its own process (Hydra and uvicorn set up logging and signals for the whole
    process, which an in-process run would leave behind for the tests after it); returns its stderr."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    res = subprocess.run([sys.executable, "-m", "fourm21.engine.serve", *args, f"hydra.run.dir={tmp_path / 'run'}"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    return res.stderr


def test_cli_errors_are_one_line(tmp_path):
    assert _main([], tmp_path).strip() == \
        "fourm21: ConfigError: ckpt_path: required, give it on the command line (ckpt_path=...)"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        err = _main(["ckpt_path=x.ckpt", f"port={port}"], tmp_path)
    assert err.strip() == f"fourm21: ConfigError: host/port: 127.0.0.1:{port} is in use (choose another port=...)"
    err = _main([f"ckpt_path={tmp_path / 'none.ckpt'}", "port=0", "max_batch_size=1"], tmp_path)
    assert err.strip().startswith("fourm21: CheckpointError:") and len(err.strip().splitlines()) == 1
