"""What the benchmark-script tests share: loading a script as a module, and an environment in which the
ultralytics peers are importable (their rows) or hidden (their ``skipped`` lines)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from tests.conftest import REPO

ULTRALYTICS_ENV = "FOURM21_ULTRALYTICS"  # a folder holding the ultralytics package (e.g. pip install --target)


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` imported as a module (once), for its functions."""
    if name not in sys.modules:
        scripts = str(REPO / "scripts")
        if scripts not in sys.path:
            sys.path.insert(0, scripts)
        spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def ultralytics_dir() -> str | None:
    """The folder ultralytics imports from: ``$FOURM21_ULTRALYTICS``, else where this interpreter finds it
    (``PYTHONPATH=DIR pytest ...``); None when neither has it. Found without importing it."""
    folder = os.environ.get(ULTRALYTICS_ENV)
    if folder:
        return folder if (Path(folder) / "ultralytics" / "__init__.py").is_file() else None
    spec = importlib.util.find_spec("ultralytics")
    return str(Path(spec.origin).parents[1]) if spec is not None and spec.origin else None


def script_env(ultralytics: bool, tmp_path: Path | None = None) -> dict[str, str]:
    """The environment of a script run: ultralytics on ``PYTHONPATH`` (``ultralytics=True``; call
    ``ultralytics_dir`` first), or hidden behind a package in ``tmp_path`` whose import fails."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", YOLO_OFFLINE="1")
    path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if ultralytics:
        path.insert(0, ultralytics_dir())
        if tmp_path is not None:
            env["YOLO_CONFIG_DIR"] = str(tmp_path / "yolo_config")
    else:
        stub = tmp_path / "hide_ultralytics" / "ultralytics"
        stub.mkdir(parents=True, exist_ok=True)
        (stub / "__init__.py").write_text('raise ImportError("hidden by the test")\n')
        path.insert(0, str(stub.parent))
    env["PYTHONPATH"] = os.pathsep.join(path)
    return env
