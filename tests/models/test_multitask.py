import pytest
import torch

from fourm21.errors import CheckpointError, ConfigError
from fourm21.inference.checkpoints import load_state
from fourm21.inference.decode import DecodeSettings, decode
from fourm21.models.multitask import build_model
from tests.conftest import TINY_CONVNEXT, TINY_VIT, model_config


@pytest.mark.parametrize("backbone", [TINY_CONVNEXT, TINY_VIT], ids=["convnext", "vit"])
def test_every_head_output_shape(backbone):
    model = build_model(model_config(backbone))
    out = model(torch.randn(2, 3, 64, 64))
    assert set(out) == {"cls", "det", "inst", "sem"}
    n_loc = sum((64 // s) ** 2 for s in (4, 8, 16))
    assert out["cls"]["logits"].shape == (2, 4)
    assert out["det"]["cls_logits"].shape == (2, n_loc, 3)
    assert out["det"]["box_ltrb"].shape == (2, n_loc, 4) and (out["det"]["box_ltrb"] >= 0).all()
    assert out["det"]["centerness"].shape == (2, n_loc)
    assert out["det"]["points"].shape == (n_loc, 2)
    assert out["inst"]["coefs"].shape == (2, n_loc, 16)
    assert out["inst"]["proto"].shape == (2, 16, 32, 32)
    assert out["sem"]["logits"].shape == (2, 4, 16, 16)
    preds = decode(out, (64, 64), DecodeSettings.from_net(model))
    assert len(preds) == 2
    p = preds[0]
    n = len(p["boxes"])
    assert p["scores"].shape == (n,) and p["labels"].shape == (n,) and p["masks"].shape == (n, 64, 64)
    assert p["semantic"].shape == (64, 64) and p["class_probs"].shape == (4,)
    assert torch.allclose(p["class_probs"].sum(), torch.tensor(1.0))


def test_heads_can_be_disabled_by_config():
    model = build_model(model_config(**{"heads.inst.enabled": False, "heads.sem.enabled": False}))
    assert set(model(torch.randn(1, 3, 64, 64))) == {"cls", "det"}


def test_image_level_heads_alone_build_and_run_no_neck():
    """A classification (or attribute) model has no dense head: no neck or fusion is built or run, and the
    weights of one built before (with a neck and fusion nobody read) still load."""
    image_only = {"heads.det.enabled": False, "heads.inst.enabled": False, "heads.sem.enabled": False}
    torch.manual_seed(0)
    net = build_model(model_config(**image_only))
    assert net.neck is None and net.fusion is None
    assert not any(k.startswith(("neck.", "fusion.")) for k in net.state_dict())
    x = torch.randn(2, 3, 64, 64)
    out = net(x)
    assert set(out) == {"cls"} and out["cls"]["logits"].shape == (2, 4)
    out["cls"]["logits"].sum().backward()
    assert all(p.grad is not None for p in net.heads.parameters())
    full = build_model(model_config())  # as such a model was built before: every tensor, heads off included
    old = {k: v for k, v in full.state_dict().items() if not k.startswith(("heads.det", "heads.inst", "heads.sem"))}
    old.update({k: v for k, v in net.state_dict().items() if k.startswith("heads.cls")})
    load_state(net, old, "old.ckpt")
    loaded = net.backbone.state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in full.backbone.state_dict().items())  # the file's weights
    with pytest.raises(CheckpointError, match="unexpected"):  # a dense head's tensors are still a mismatch
        load_state(net, {**old, "heads.det.x": torch.zeros(1)}, "old.ckpt")


def test_head_strides_must_exist_in_the_neck():
    with pytest.raises(ConfigError, match="heads.det.strides"):
        build_model(model_config(**{"heads.det.strides": [8, 64], "heads.inst.strides": [8, 64]}))


def test_fusion_switch_changes_the_dense_features():
    torch.manual_seed(0)
    on = build_model(model_config())
    assert on.fusion is not None
    off = build_model(model_config(**{"fusion.enabled": False}))
    assert off.fusion is None
    # fusion starts as identity, then any change of its FiLM weights changes the detection output
    x = torch.randn(1, 3, 64, 64)
    before = on(x)["det"]["cls_logits"].clone()
    with torch.no_grad():
        on.fusion.film.weight.normal_(0, 0.5)
    assert not torch.allclose(before, on(x)["det"]["cls_logits"])


def test_channels_last_input_gives_the_same_outputs():
    torch.manual_seed(0)
    plain = build_model({**model_config(), "channels_last": False}).eval()
    fast = build_model({**model_config(), "channels_last": True}).eval()
    fast.load_state_dict(plain.state_dict())
    seen = []
    fast.backbone.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x = torch.randn(2, 3, 64, 64)
    a, b = plain(x), fast(x)
    assert seen[0].is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(
        memory_format=torch.channels_last)
    for task in a:
        for key, value in a[task].items():
            assert torch.allclose(value, b[task][key], atol=1e-4), (task, key)


@pytest.mark.parametrize("skip", [True, False])
def test_neck_skips_levels_finer_than_every_head(skip):
    cfg = model_config(**{"heads.det.strides": [8, 16], "heads.sem.strides": [8, 16, 32], "neck.skip_unused": skip})
    model = build_model(cfg)
    assert model.neck.strides == ([8, 16, 32] if skip else [4, 8, 16, 32])
    out = model(torch.randn(2, 3, 64, 64))
    assert out["sem"]["logits"].shape[-2:] == (8, 8) and out["inst"]["proto"].shape[-2:] == (16, 16)
    sum(v.float().sum() for head in out.values() for v in head.values()).backward()
