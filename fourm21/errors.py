"""The errors fourm21 raises for bad user input; the CLIs print them in one line and exit non-zero.

Every message names the file or the config key at fault and, where there is one, the fix.
"""

from __future__ import annotations

import re


class Fourm21Error(Exception):
    """Base class: a problem the user can fix (bad file, bad key), not a bug."""


class ConfigError(Fourm21Error):
    """A config key is missing, has the wrong type or an impossible value."""


class DatasetError(Fourm21Error):
    """A data file is missing or malformed; the message names the file."""


class BadImageError(DatasetError):
    """One image (or its per-image mask) cannot be used; ``data.on_bad_image`` decides: skip it or stop.

    ``path`` and ``reason`` are the parts of the message, for the skip log; one positional argument
    only, so that PyTorch can re-raise it from a DataLoader worker."""

    def __init__(self, message: str, *, path: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason or message


class CheckpointError(Fourm21Error):
    """A checkpoint is missing, cut short or built for another architecture."""


_WORKER_WRAP = re.compile(r"Original Traceback \(most recent call last\):")
_QUALIFIED = re.compile(r"^(?:[\w.]+\.)?(\w+Error): ")


def find_user_error(exc: BaseException) -> Fourm21Error | None:
    """The Fourm21Error behind ``exc``: itself, or the cause Hydra's ``instantiate`` wrapped it in."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, Fourm21Error):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line. An error re-raised from a DataLoader worker carries the worker's
    whole traceback as its message: only its last line, the original message, is kept."""
    text = str(exc)
    if _WORKER_WRAP.search(text):
        last = [ln for ln in text.strip().splitlines() if ln.strip()][-1].strip()
        text = _QUALIFIED.sub("", last)
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return f"{type(exc).__name__}: {text}"


class TrainingError(Fourm21Error):
    """Training cannot go on (e.g. too many non-finite losses in a row); the last good checkpoint is kept."""


def check_number(value: object, key: str, low: float | None = None, high: float | None = None, *,
                 integer: bool = False, low_open: bool = False, high_open: bool = False) -> None:
    """ConfigError naming ``key`` unless ``value`` is a number (an int with ``integer``) within the bounds."""
    kind = "an integer" if integer else "a number"
    if not isinstance(value, int if integer else int | float) or isinstance(value, bool):
        raise ConfigError(f"{key}: must be {kind}, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ConfigError(f"{key}: must be {'>' if low_open else '>='} {low:g}, got {value!r}")
    if high is not None and (value >= high if high_open else value > high):
        raise ConfigError(f"{key}: must be {'<' if high_open else '<='} {high:g}, got {value!r}")
