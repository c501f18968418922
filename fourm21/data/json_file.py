"""Reading a label file's JSON with the one-line errors every reader gives (file named, what it should be)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fourm21.errors import DatasetError


def read_json(path: Path, kind: str) -> Any:
    """The parsed JSON of ``path``; a DatasetError naming the file and ``kind`` (e.g. "a COCO JSON") otherwise."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not a UTF-8 text file (is it {kind}?)") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from None
