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
from omegaconf.errors import MissingMandatoryValue

from fourm21.errors import find_user_error, one_line

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")  # shipped inside the package (wheels too)


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
    """User errors (bad file, bad key) print one line, ``fourm21: XError: message``, and exit 2 instead of
    a traceback; also when Hydra's ``instantiate`` or a DataLoader worker wrapped them. A required key
    left unset (``???``) is reported the same way. Anything else is a bug: its traceback is kept."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MissingMandatoryValue as e:
            key = getattr(e, "full_key", None) or "a key"
            print(f"fourm21: ConfigError: {key}: required, give it on the command line ({key}=...)", file=sys.stderr)
            sys.exit(2)
        except Exception as e:
            user = find_user_error(e)
            if user is None:
                raise
            print(f"fourm21: {one_line(user)}", file=sys.stderr)
            sys.exit(2)
    return wrapper


def save_config(cfg: DictConfig, run_dir: Path) -> Path:
    """The fully resolved config of this run, next to its results."""
    path = run_dir / "config.yaml"
    path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return path
