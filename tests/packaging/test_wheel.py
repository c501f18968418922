"""The wheel is complete: built, installed (not editable) into a fresh environment, its CLI trains from a
folder outside the repository with the configs it ships."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out, src = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("src")
    # built from a copy of what a source distribution holds, so the build leaves nothing in the repository
    shutil.copytree(REPO / "fourm21", src / "fourm21", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    (path,) = out.glob("fourm21-*.whl")
    return path


def test_wheel_ships_the_configs_and_type_marker(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("fourm21/configs/train.yaml", "fourm21/configs/data/shapes.yaml",
                     "fourm21/configs/model/multitask.yaml", "fourm21/configs/model/backbone/convnext_atto.yaml",
                     "fourm21/py.typed"):
        assert required in names, required
    shipped = {n for n in names if n.startswith("fourm21/configs/") and n.endswith(".yaml")}
    in_repo = {str(p.relative_to(REPO)) for p in (REPO / "fourm21" / "configs").rglob("*.yaml")}
    assert shipped == in_repo


def test_installed_wheel_trains_outside_the_repo(wheel, tmp_path):
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True, timeout=300)
    py = env_dir / "bin" / "python"
    # the dependencies come from this environment's site-packages (a .pth line: its own .pth files, the
    # editable install of fourm21 among them, are not processed); fourm21 itself only from the wheel
    (purelib,) = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                capture_output=True, text=True, check=True).stdout.split()
    Path(purelib, "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    res = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = subprocess.run([str(py), "-c", "import fourm21; print(fourm21.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(env_dir), where  # the installed copy, not the repository's
    res = subprocess.run([str(env_dir / "bin" / "fourm21-train"), "trainer.fast_dev_run=true",
                          "data.generate.num_train=8", "data.generate.num_val=4", "num_threads=1"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-3000:])
    assert (work / "data" / "shapes" / "annotations" / "instances_train.json").is_file()
    assert list((work / "runs" / "train").glob("*/report.json"))
