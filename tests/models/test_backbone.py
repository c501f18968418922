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


def test_the_network_owns_its_input_normalisation():
    """mean/std from timm's data config of the model (ImageNet for ConvNeXt, CLIP's for a CLIP ViT) unless the
    config sets them; uint8 and float pixels give the same features; the buffers stay out of the state dict."""
    convnext = TimmBackbone(**TINY_CONVNEXT).eval()
    assert convnext.mean == pytest.approx((0.485, 0.456, 0.406))
    assert convnext.std == pytest.approx((0.229, 0.224, 0.225))
    clip = TimmBackbone(**{**TINY_VIT, "name": "vit_base_patch16_clip_224.openai"})
    assert clip.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    own = TimmBackbone(**TINY_CONVNEXT, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]).eval()
    assert own.mean == (0.5, 0.5, 0.5)
    assert not any("pixel_" in k for k in convnext.state_dict())
    pixels = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        for a, b in zip(convnext(pixels), convnext(pixels.float())):
            assert torch.equal(a, b)
        normalised = convnext.normalize(pixels)
        assert normalised[:, 0].mean().abs() < 2 and torch.allclose(convnext.denormalize(normalised), pixels.float(),
                                                                    atol=1e-4)
        own.load_state_dict(convnext.state_dict())  # same weights, other statistics: other features
        assert not torch.allclose(own(pixels)[-1], convnext(pixels)[-1])
    with pytest.raises(ConfigError, match="model.backbone.mean / std"):
        TimmBackbone(**TINY_CONVNEXT, std=[0.2, 0.0, 0.2])
