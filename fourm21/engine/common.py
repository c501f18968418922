"""What the train, eval and predict entry points share: config location, seeding, errors, run dir."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fourm21.errors import Fourm21Error

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")


def run_dir_of(cfg: DictConfig) -> Path:
    """The Hydra run directory (honours ``hydra.run.dir=DIR``), or ``paths.run_dir`` outside Hydra."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    path = Path(cfg.paths.run_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def setup_runtime(cfg: DictConfig) -> None:
    import lightning as L

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """User errors (bad file, bad key) print one line and exit 2 instead of a traceback."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Fourm21Error as e:
            print(f"fourm21: {type(e).__name__}: {e}", file=sys.stderr)
            sys.exit(2)
    return wrapper


def save_config(cfg: DictConfig, run_dir: Path) -> Path:
    """The fully resolved config of this run, next to its results."""
    path = run_dir / "config.yaml"
    path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return path
