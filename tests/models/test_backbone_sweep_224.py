"""The backbone sweep at 224 px with the default settings (channels-last on, the training CLI), each backbone in
its own process: a native abort (the heap corruption FastViT's strided 1x1 RGB convolutions once caused on AMD
Zen 4 at this size, invisible at 64 px) fails the one backbone by name instead of killing the suite. Slow
(about 20 s per backbone): ``make test-all`` or ``pytest -m slow``."""

from __future__ import annotations

import signal

import pytest

from fourm21.models.backbone import TimmBackbone
from tests.conftest import run_cli
from tests.models.test_backbone_sweep import FAMILIES, _backbone

SIZE = 224


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, _ in FAMILIES], ids=[n for n, _ in FAMILIES])
def test_backbone_trains_at_224_with_the_defaults(name, tmp_path):
    strides = [s for s in TimmBackbone(**_backbone(name)).strides if s >= 4][:3]  # the levels the heads can read
    size = SIZE if SIZE % max(strides + [32]) == 0 else 256  # LeViT's stride 64 needs a multiple of 64
    heads = [f"model.heads.det.strides=[{','.join(map(str, strides))}]",
             f"model.heads.sem.strides=[{','.join(map(str, strides))}]"]
    res = run_cli("fourm21-train", [f"model.backbone.name={name}", f"data.img_size={size}",
                                    "data.generate.num_train=4", "data.generate.num_val=2",
                                    f"paths.data_dir={tmp_path / 'data'}",
                                    "data.datamodule.batch_size=2", "data.datamodule.num_workers=0",
                                    "trainer.fast_dev_run=true", "plots=false", *heads,
                                    f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    if res.returncode < 0 or res.returncode == 128 + signal.SIGABRT:
        last = (res.stderr.strip().splitlines() or ["(nothing on stderr)"])[-1]
        pytest.fail(f"{name} at {size} px: the process died (signal {-res.returncode if res.returncode < 0 else 6}): "
                    f"{last}")
    assert res.returncode == 0, f"{name}: {res.stderr[-2000:]}"
    assert "channels_last: true" in (tmp_path / "run" / "config.yaml").read_text()
