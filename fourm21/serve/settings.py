"""The service's keys from ``configs/serve.yaml``, checked once at start (a ``ConfigError`` names the key)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from omegaconf import DictConfig

from fourm21.errors import ConfigError
from fourm21.tasks import override_keys, override_values


@dataclass(frozen=True)
class ServeSettings:
    """What the app needs besides the model; the meaning of each key is in serve.yaml."""

    host: str
    port: int
    max_batch_size: int
    batch_timeout_s: float
    max_queue: int
    queue_timeout_s: float
    max_upload_mb: float
    max_image_pixels: int
    request_timeout_s: float
    max_header_bytes: int
    img_size: int | None
    score_thr: float  # also the score the overlay draws from
    masks: bool
    show_semantic: bool
    decode: dict[str, Any] = field(default_factory=dict)  # the set decode keys (score_thr, max_det ...): set_thresholds

    @property
    def thresholds(self) -> dict:
        """Every decode key a task takes, with its value here (None: the model's own)."""
        return {k: self.decode.get(k) for k in override_keys()}

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> ServeSettings:
        values: dict[str, Any] = {f.name: cfg.get(f.name) for f in fields(cls) if f.name != "decode"}
        for key, (lo, hi, optional) in _RANGES.items():
            if not (optional and values[key] is None):
                _check_number(key, values[key], lo, hi)
        for key in _WHOLE:
            if isinstance(values[key], float):
                raise ConfigError(f"{key}: must be a whole number, got {values[key]}")
        for key in ("max_upload_mb", "request_timeout_s", "queue_timeout_s"):
            if values[key] <= 0:
                raise ConfigError(f"{key}: must be > 0, got {values[key]}")
        for key in ("masks", "show_semantic"):
            if not isinstance(values[key], bool):
                raise ConfigError(f"{key}: must be true or false, got {values[key]!r}")
        return cls(**values, decode=override_values(cfg))


# key: (lowest, highest, null allowed)
_RANGES = {"port": (0, 65535, False), "max_batch_size": (1, None, False), "batch_timeout_s": (0, None, False),
           "max_upload_mb": (0, None, False), "max_image_pixels": (1, None, False),
           "request_timeout_s": (0, None, False), "score_thr": (0, 1, False), "img_size": (1, None, True),
           "max_queue": (1, None, False), "queue_timeout_s": (0, None, False), "max_header_bytes": (1024, None, False)}

_WHOLE = ("port", "max_batch_size", "max_image_pixels", "max_queue", "max_header_bytes")


def _check_number(key: str, value: object, lo: float | None, hi: float | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key}: must be a number, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        span = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ConfigError(f"{key}: must be {span}, got {value}")
