"""One ``fourm21-serve`` process for the serve tests: started through the CLI on a free 127.0.0.1 port over
the session's tiny trained checkpoint, with small limits so the 4xx cases are cheap to provoke."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

# the limits the tests provoke; score_thr=0 so the barely trained model still reports detections
SERVER_ARGS = ["score_thr=0.0", "max_det=5", "max_upload_mb=0.25", "max_image_pixels=250000",
               "max_batch_size=8", "batch_timeout_s=0.05", "request_timeout_s=30", "num_threads=2",
               "log_level=warning"]


@dataclass(frozen=True)
class Server:
    url: str
    log: Path
    process: subprocess.Popen

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def started_server(cmd: list[str], ckpt_path: Path, cwd: Path, tmp: Path, *args: str) -> Iterator[Server]:
    """``cmd ckpt_path=... host=127.0.0.1 port=<free>`` (the serve CLI) started and waited for until
    ``/health`` answers (at most 90 s); terminated on exit (killed if it does not stop within 15 s)."""
    port = free_port()
    log = tmp / "server.log"
    full = [*cmd, f"ckpt_path={ckpt_path}", "host=127.0.0.1", f"port={port}", f"hydra.run.dir={tmp / 'run'}", *args]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    with log.open("w") as out:
        proc = subprocess.Popen(full, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    srv = Server(f"http://127.0.0.1:{port}", log, proc)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"fourm21-serve exited with {proc.returncode}:\n{srv.log_tail()}")
            try:
                if httpx.get(f"{srv.url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"fourm21-serve not healthy after 90 s:\n{srv.log_tail()}")
            time.sleep(0.2)
        yield srv
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def server(tiny_run, tmp_path_factory) -> Iterator[Server]:
    work, run_dir, _ = tiny_run
    with started_server([sys.executable, "-m", "fourm21.engine.serve"], run_dir / "checkpoints" / "best.ckpt",
                        work, tmp_path_factory.mktemp("serve"), *SERVER_ARGS) as srv:
        yield srv


@pytest.fixture(scope="session")
def sample_image(tiny_run) -> Path:
    """A validation image of the tiny run's generated shapes (it has objects to detect)."""
    work, _, _ = tiny_run
    return sorted((work / "data" / "shapes" / "images" / "val").glob("*.png"))[0]
