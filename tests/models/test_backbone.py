import pytest
import torch
from safetensors.torch import save_file

from fourm21.errors import CheckpointError, ConfigError
from fourm21.models.backbone import TimmBackbone
from tests.conftest import TINY_CONVNEXT, TINY_VIT


@pytest.mark.parametrize("cfg", [TINY_CONVNEXT, TINY_VIT], ids=["convnext", "vit"])
def test_feature_levels(cfg):
    bb = TimmBackbone(**cfg)
    feats = bb(torch.randn(2, 3, 64, 64))
    assert len(feats) == len(bb.strides) == len(bb.channels) == 4
    for f, s, c in zip(feats, bb.strides, bb.channels):
        assert f.shape == (2, c, 64 // s, 64 // s)


def test_vit_uses_a_simple_pyramid():
    bb = TimmBackbone(**TINY_VIT)
    assert bb.pyramid is not None and bb.strides == [4, 8, 16, 32]


def test_unknown_backbone_names_the_key():
    with pytest.raises(ConfigError, match="model.backbone.name.*not_a_net"):
        TimmBackbone(name="not_a_net")


def test_local_checkpoint_loads_and_missing_one_is_named(tmp_path):
    src = TimmBackbone(**TINY_CONVNEXT)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.body.state_dict().items()}, str(path))
    cfg = dict(TINY_CONVNEXT, checkpoint=str(path))
    dst = TimmBackbone(**cfg)
    for k, v in src.body.state_dict().items():
        torch.testing.assert_close(dst.body.state_dict()[k], v)
    with pytest.raises(CheckpointError, match="convnext_atto.*missing.safetensors"):
        TimmBackbone(**dict(TINY_CONVNEXT, checkpoint=str(tmp_path / "missing.safetensors")))


def test_pretrained_without_network_names_backbone_and_the_way_out(monkeypatch):
    import timm

    def offline(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise OSError("We couldn't connect to the hub")
        raise AssertionError("only the pretrained path is exercised here")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(CheckpointError, match="convnext_atto.*model.backbone.checkpoint=PATH"):
        TimmBackbone(name="convnext_atto", pretrained=True)
