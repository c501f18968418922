"""fourm21-serve: an HTTP service over a checkpoint or an export directory, with an upload page at ``/``.

    fourm21-serve ckpt_path=runs/.../best.ckpt port=8000
    curl -F image=@photo.jpg 'http://127.0.0.1:8000/predict?overlay=true'
"""

from __future__ import annotations

import errno
import socket

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
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model = load(cfg.ckpt_path, device)
    app = create_app(model, settings, str(cfg.ckpt_path))
    print(f"fourm21-serve: {cfg.ckpt_path} (heads: {', '.join(model.heads)}) on "
          f"http://{settings.host}:{settings.port}/", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=cfg.log_level)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="serve")
@friendly_errors
def main(cfg: DictConfig) -> None:
    run_serve(cfg)


if __name__ == "__main__":
    main()
