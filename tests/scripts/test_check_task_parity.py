"""scripts/check_task_parity.py: two captures of the same code compare IDENTICAL; a changed tensor is reported."""

import subprocess
import sys

import torch

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "check_task_parity.py"


def test_captures_of_one_version_are_identical_and_a_change_is_named(tmp_path):
    for name in ("a.pt", "b.pt"):
        res = subprocess.run([sys.executable, str(SCRIPT), "capture", str(tmp_path / name)], capture_output=True,
                             text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
    same = subprocess.run([sys.executable, str(SCRIPT), "compare", str(tmp_path / "a.pt"), str(tmp_path / "b.pt")],
                          capture_output=True, text=True, timeout=120)
    assert same.returncode == 0 and same.stdout.strip() == "IDENTICAL"
    capture = torch.load(tmp_path / "b.pt", weights_only=False)
    assert set(capture["all6/losses"]) == {"cls", "det", "inst", "sem", "attr", "mlc"}
    capture["all6/losses"]["det"]["box"] = capture["all6/losses"]["det"]["box"] + 1e-6
    torch.save(capture, tmp_path / "b.pt")
    changed = subprocess.run([sys.executable, str(SCRIPT), "compare", str(tmp_path / "a.pt"), str(tmp_path / "b.pt")],
                             capture_output=True, text=True, timeout=120)
    assert changed.returncode == 1 and "all6/losses/det/box: differs" in changed.stdout
