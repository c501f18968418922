import json

import torch
from safetensors.torch import load_file

from fourm21.losses.contrastive import nt_xent
from fourm21.models.backbone import TimmBackbone
from tests.conftest import TINY, TINY_CONVNEXT, run_cli


def test_nt_xent_rewards_matching_views():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 32, generator=g)
    matched = nt_xent(z, z + 0.01 * torch.randn(16, 32, generator=g))
    unmatched = nt_xent(z, torch.randn(16, 32, generator=g))
    assert matched < 0.5 < unmatched


def test_pretrain_writes_weights_that_a_multitask_run_loads(tmp_path, shapes_root):
    out = tmp_path / "pre"
    res = run_cli("fourm21-pretrain", [f"data.root={shapes_root / 'images/train'}", "batch_size=8",
                                       "trainer.max_epochs=1", "+backbone.dims=[16,32,48,64]",
                                       "+backbone.depths=[1,1,1,1]", "trainer.enable_model_summary=false",
                                       f"hydra.run.dir={out}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    weights = out / "backbone.safetensors"
    report = json.loads((out / "report.json").read_text())
    assert report["pretrain/images"] == 24 and report["pretrain/loss"] > 0
    loaded = TimmBackbone(**dict(TINY_CONVNEXT, checkpoint=str(weights)))
    state = load_file(str(weights))
    for k, v in loaded.body.state_dict().items():
        torch.testing.assert_close(v, state[k])
    res = run_cli("fourm21-train", [*TINY, f"model.backbone.checkpoint={weights}", "trainer.fast_dev_run=true",
                                    f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}"],
                  tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
