"""What the train, eval and predict entry points share: config location, seeding, errors, run dir."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
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


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles with bf16 (Intel Xeon since Sapphire Rapids), where oneDNN runs bf16
    convolutions several times faster than fp32; elsewhere CPU bf16 is emulated and slower."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe() and torch.cpu._is_avx512_bf16_supported())


def resolve_precision(cfg: DictConfig) -> None:
    """``trainer.precision=auto`` -> ``bf16-mixed`` on a CPU with AMX (the default run's training step
    290 -> 220 ms with fused AdamW, same figures: docs/performance.md), else ``32-true``; on a GPU
    ``bf16-mixed`` where it has bf16, else ``32-true`` (fp16's gradient scaler and a fused optimiser's clipping
    do not mix). Written into the config, so config.yaml says which."""
    trainer = cfg.get("trainer")
    if trainer is None or str(trainer.get("precision")) != "auto":
        return
    if str(trainer.get("accelerator", "cpu")) == "cpu" or not torch.cuda.is_available():
        chosen = "bf16-mixed" if cpu_has_amx() else "32-true"
    else:
        chosen = "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    with open_dict(cfg):
        cfg.trainer.precision = chosen


def setup_runtime(cfg: DictConfig) -> None:
    import lightning as L

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    resolve_precision(cfg)
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
