"""fourm21-serve: an HTTP service over a checkpoint or an export directory, with an upload page at ``/``.

    fourm21-serve ckpt_path=runs/.../best.ckpt port=8000
    curl -F image=@photo.jpg 'http://127.0.0.1:8000/predict?overlay=true'

SIGTERM (a process manager stopping it) or Ctrl-C: stop accepting connections, answer every request already
accepted, then exit 0.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
import time
from types import FrameType

import hydra
import torch
from omegaconf import DictConfig

from fourm21.engine.common import CONFIG_DIR, friendly_errors
from fourm21.errors import ConfigError
from fourm21.serve.settings import ServeSettings

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def check_port(host: str, port: int) -> None:
    """A ConfigError now, before the model loads, if ``host:port`` cannot be listened on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            why = "is in use (choose another port=...)" if e.errno == errno.EADDRINUSE else f"cannot be used ({e})"
            raise ConfigError(f"host/port: {host}:{port} {why}") from None


def _exit_0(signum: int, frame: FrameType | None) -> None:
    """SIGTERM outside uvicorn's own handling: before it serves, or re-raised by it once it has drained."""
    raise SystemExit(0)


def run_serve(cfg: DictConfig) -> None:
    """Load the model once, then serve until Ctrl-C / SIGTERM."""
    import uvicorn

    from fourm21.inference.loading import load
    from fourm21.serve.app import create_app

    settings = ServeSettings.from_config(cfg)
    if cfg.log_level not in LOG_LEVELS:
        raise ConfigError(f"log_level: one of {LOG_LEVELS}, got {cfg.log_level!r}")
    check_port(settings.host, settings.port)
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    logging.getLogger("fourm21.serve").setLevel(logging.DEBUG if cfg.log_level == "trace" else cfg.log_level.upper())
    signal.signal(signal.SIGTERM, _exit_0)  # uvicorn re-raises the SIGTERM it drained on: exit 0, not -15
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    start = time.perf_counter()
    model = load(cfg.ckpt_path, device)
    load_seconds = time.perf_counter() - start
    app = create_app(model, settings, str(cfg.ckpt_path), load_seconds)
    print(f"fourm21-serve: {cfg.ckpt_path} (heads: {', '.join(model.heads)}) on "
          f"http://{settings.host}:{settings.port}/ (loaded in {load_seconds:.1f} s)", flush=True)
    # access_log off: the app writes its own access line, with the request id. The HTTP layer drops headers
    # over 4x max_header_bytes (the app answers 431 from max_header_bytes); draining on SIGTERM ends within
    # request_timeout_s, as every request does, plus a margin
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=cfg.log_level, access_log=False,
                h11_max_incomplete_event_size=4 * settings.max_header_bytes,
                timeout_graceful_shutdown=int(settings.request_timeout_s) + 5)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="serve")
@friendly_errors
def main(cfg: DictConfig) -> None:
    run_serve(cfg)


if __name__ == "__main__":
    main()
