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


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 instructions at all (AVX-512 BF16: AMD Zen 4 and later, Intel since Cooper Lake)."""
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(probe and probe())


def cpu_model() -> str:
    """lscpu's model name of this CPU (what the precision probe's cache and the benchmarks are keyed by)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def _probe_step_times(iters: int = 5) -> tuple[float, float]:
    """Median seconds of a small convolutional training step (channels-last, 3x3 and pointwise convolutions as in
    the backbones) in fp32 and under bf16 autocast, timed in turn; the caller's random state is left as it was."""
    import statistics
    import time

    from torch import nn
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.GELU(), nn.Conv2d(32, 128, 1), nn.GELU(),
                            nn.Conv2d(128, 32, 1), nn.Conv2d(32, 64, 3, 2, 1), nn.GELU(), nn.Conv2d(64, 256, 1),
                            nn.GELU(), nn.Conv2d(256, 64, 1)).to(memory_format=torch.channels_last)
        x = torch.randn(16, 3, 128, 128).contiguous(memory_format=torch.channels_last)
        times: dict[bool, list[float]] = {False: [], True: []}
        for i in range(iters + 2):
            for bf16 in (False, True):
                t0 = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = net(x).float().square().mean()
                loss.backward()
                net.zero_grad(set_to_none=True)
                if i >= 2:  # two warm-up rounds
                    times[bf16].append(time.perf_counter() - t0)
    return statistics.median(times[False]), statistics.median(times[True])


def cpu_bf16_faster() -> bool:
    """Whether bf16 autocast trains faster than fp32 on this CPU: yes with AMX; no without bf16 instructions; in
    between (AVX-512 BF16 without AMX, e.g. AMD Zen 4) by a probe (``_probe_step_times``, about two seconds) run
    once per CPU model, torch version and thread count and cached in ``~/.cache/fourm21/cpu_bf16.json``: bf16 when
    its step takes under 0.9x the fp32 one. ``FOURM21_CPU_BF16=1`` / ``0`` decides without a probe."""
    import json
    import os

    forced = os.environ.get("FOURM21_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    if cpu_has_amx():
        return True
    if not cpu_has_bf16():
        return False
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fourm21" / "cpu_bf16.json"
    key = f"{cpu_model()}|torch {torch.__version__}|{torch.get_num_threads()} threads"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known.get(key), dict) and "bf16" in known[key]:
        return bool(known[key]["bf16"])
    fp32_s, bf16_s = _probe_step_times()
    faster = bf16_s < 0.9 * fp32_s
    known[key] = {"bf16": faster, "fp32_ms": round(fp32_s * 1e3, 2), "bf16_ms": round(bf16_s * 1e3, 2)}
    try:  # best effort: a read-only home only means probing again next time
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(known, indent=1))
    except OSError:
        pass
    return faster


def resolve_precision(cfg: DictConfig) -> None:
    """``trainer.precision=auto`` -> ``bf16-mixed`` on a CPU where bf16 autocast is faster (``cpu_bf16_faster``:
    AMX, or a probe on AVX-512 BF16 CPUs without it; the default run's figures are the same: docs/performance.md),
    else ``32-true``; on a GPU ``bf16-mixed`` where it has bf16, else ``32-true`` (fp16's gradient scaler and a
    fused optimiser's clipping do not mix). Written into the config, so config.yaml says which."""
    trainer = cfg.get("trainer")
    if trainer is None or str(trainer.get("precision")) != "auto":
        return
    if str(trainer.get("accelerator", "cpu")) == "cpu" or not torch.cuda.is_available():
        chosen = "bf16-mixed" if cpu_bf16_faster() else "32-true"
    else:
        chosen = "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    with open_dict(cfg):
        cfg.trainer.precision = chosen


def setup_runtime(cfg: DictConfig) -> None:
    import lightning as L

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.get("num_threads"):  # before the precision probe, which times at this thread count
        torch.set_num_threads(int(cfg.num_threads))
    resolve_precision(cfg)


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
