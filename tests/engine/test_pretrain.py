import json

import pytest
import torch
from safetensors.torch import load_file

from fourm21.errors import ConfigError
from fourm21.losses.contrastive import nt_xent
from fourm21.losses.masked_image import masked_pixel_l1
from fourm21.models.backbone import TimmBackbone
from fourm21.models.masked_image import MaskedImageModel, random_block_mask
from tests.conftest import TINY, TINY_CONVNEXT, TINY_VIT, run_cli, run_cli_here


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
    state = load_file(str(weights))
    torch.manual_seed(42)
    fresh = TimmBackbone(**TINY_CONVNEXT).body.state_dict()
    assert sum(not torch.allclose(v, state[k]) for k, v in fresh.items()) > len(state) // 2  # not a fresh init
    loaded = TimmBackbone(**dict(TINY_CONVNEXT, checkpoint=str(weights)))
    for k, v in loaded.body.state_dict().items():
        torch.testing.assert_close(v, state[k])
    # a multitask run started from them: after two steps at a negligible learning rate its checkpoint's
    # backbone is still the pretrained one (a run that ignored the checkpoint would hold a fresh init)
    res = run_cli("fourm21-train", [*TINY, f"model.backbone.checkpoint={weights}", "optim.lr=1e-12",
                                    "trainer.max_epochs=1", "evaluate=false", "plots=false",
                                    f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}"],
                  tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    trained = torch.load(tmp_path / "run/checkpoints/last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    for k, v in state.items():
        torch.testing.assert_close(trained[f"model.backbone.body.{k}"], v, atol=1e-8, rtol=0)


def test_block_mask_has_the_asked_ratio_in_whole_blocks():
    mask = random_block_mask(4, (8, 8), block=2, ratio=0.5, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (4, 8, 8) and mask.dtype == torch.bool
    assert (mask.flatten(1).sum(1) == 32).all()  # 8 of the 16 2x2 blocks
    blocks = mask.view(4, 4, 2, 4, 2)
    assert (blocks.all(dim=(2, 4)) == blocks.any(dim=(2, 4))).all()  # each 2x2 block is all or nothing


def test_masked_pixel_loss_ignores_visible_patches():
    images = torch.zeros(1, 3, 16, 16)
    mask = torch.tensor([[[True, False], [False, False]]])
    pred = torch.zeros(1, 3, 16, 16)
    pred[..., 8:, :] = 5.0  # wrong only where nothing is masked
    assert masked_pixel_l1(pred, images, mask, patch_size=8) == 0
    pred[..., :8, :8] = 1.0  # wrong in the masked patch
    assert masked_pixel_l1(pred, images, mask, patch_size=8) == pytest.approx(1.0)


def test_masked_image_model_replaces_masked_tokens_only():
    mim = MaskedImageModel(TimmBackbone(**TINY_VIT)).eval()
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)  # pixels, as the network takes them
    plain = mim.backbone.body(mim.backbone.normalize(x))[-1]
    none = torch.zeros(2, 8, 8, dtype=torch.bool)
    assert torch.allclose(mim.encode(x, none), plain, atol=1e-5)
    masked = none.clone()
    masked[:, :4] = True
    assert not torch.allclose(mim.encode(x, masked), plain, atol=1e-3)
    assert mim(x, masked).shape == x.shape
    with pytest.raises(ConfigError, match="needs a ViT"):
        MaskedImageModel(TimmBackbone(**TINY_CONVNEXT))


def test_simmim_pretrain_changes_the_vit_and_its_weights_load(tmp_path, shapes_root):
    out = tmp_path / "mim"
    res = run_cli("fourm21-pretrain", [f"data.root={shapes_root / 'images/train'}", "batch_size=8",
                                       "model/backbone@backbone=vit_tiny", "trainer.max_epochs=2",
                                       "+backbone.embed_dim=48", "+backbone.depth=2", "+backbone.num_heads=2",
                                       "trainer.enable_model_summary=false", f"hydra.run.dir={out}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["pretrain/loss"] > 0 and "simmim" in (out / "report.md").read_text()
    weights = out / "backbone.safetensors"
    state = load_file(str(weights))
    torch.manual_seed(42)
    fresh = TimmBackbone(**TINY_VIT)
    changed = [k for k, v in fresh.body.state_dict().items() if not torch.allclose(v, state[k])]
    assert any("blocks" in k for k in changed) and any("patch_embed" in k for k in changed)
    loaded = TimmBackbone(**dict(TINY_VIT, checkpoint=str(weights)))
    for k, v in loaded.body.state_dict().items():
        torch.testing.assert_close(v, state[k])


def test_pretrain_rejects_an_unknown_method_and_backbone(tmp_path, shapes_root):
    res = run_cli_here("fourm21-pretrain", [f"data.root={shapes_root / 'images/train'}", "method=byol",
                                       f"hydra.run.dir={tmp_path / 'x'}"], tmp_path)
    assert res.returncode == 2 and "method: must be one of" in res.stderr
    assert "Traceback" not in res.stderr
    res = run_cli_here("fourm21-pretrain", [f"data.root={shapes_root / 'images/train'}", "backbone=nonesuch",
                                       f"hydra.run.dir={tmp_path / 'y'}"], tmp_path)
    assert res.returncode == 2 and "backbone: no config 'nonesuch'" in res.stderr
