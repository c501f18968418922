"""``model=lite``: every head within 5 M parameters, with the default model's outputs and learning tests."""

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fourm21.engine.common import CONFIG_DIR
from fourm21.inference.decode import DecodeSettings, decode
from fourm21.models.multitask import build_model
from tests.engine.test_overfit import overfit_and_score

HEADS = {"cls", "det", "inst", "sem"}


def lite_config(*overrides: str) -> dict:
    """fourm21/configs/model/lite.yaml as ``fourm21-train model=lite`` composes it (shapes: 3 objects, 4 scenes)."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["model=lite", *overrides])
    return OmegaConf.to_container(cfg.model, resolve=True)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_lite_has_every_key_of_the_default_model():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        default = compose(config_name="train").model
    lite = lite_config()

    def keys(d: dict, prefix: str = "") -> set[str]:
        return {f"{prefix}{k}" for k in d} | {x for k, v in d.items() if isinstance(v, dict)
                                              for x in keys(v, f"{prefix}{k}.")}
    assert keys(OmegaConf.to_container(default, resolve=True)) <= keys(lite)


@pytest.mark.parametrize("data", [[], ["data.num_classes=80", "data.num_image_classes=1000"]], ids=["shapes", "coco"])
def test_lite_is_within_5m_parameters_with_all_heads(data):
    model = build_model(lite_config(*data))
    assert set(model.heads) == HEADS and model.fusion is not None
    assert n_params(model) <= 5_000_000, n_params(model)
    default = build_model(lite_config(*data, "model=multitask"))
    assert n_params(model) < n_params(default)


def test_lite_output_shape_of_every_head():
    model = build_model(lite_config()).eval()
    out = model(torch.randn(2, 3, 64, 64))
    assert set(out) == HEADS
    strides = model.heads["det"].strides
    assert strides == [8, 16, 32]
    n_loc = sum((64 // s) ** 2 for s in strides)
    assert out["cls"]["logits"].shape == (2, 4)
    assert out["det"]["cls_logits"].shape == (2, n_loc, 3)
    assert out["det"]["box_ltrb"].shape == (2, n_loc, 4) and (out["det"]["box_ltrb"] >= 0).all()
    assert out["det"]["centerness"].shape == (2, n_loc)
    assert out["inst"]["coefs"].shape == (2, n_loc, 16)
    assert out["inst"]["proto"].shape == (2, 16, 16, 16)  # half the finest detection stride
    assert out["sem"]["logits"].shape == (2, 4, 8, 8)
    preds = decode(out, (64, 64), DecodeSettings.from_net(model))
    assert len(preds) == 2
    p = preds[0]
    n = len(p["boxes"])
    assert p["scores"].shape == (n,) and p["labels"].shape == (n,) and p["masks"].shape == (n, 64, 64)
    assert p["semantic"].shape == (64, 64) and p["class_probs"].shape == (4,)


def test_lite_with_the_cifar10_experiment_keeps_only_classification():
    model = build_model(lite_config("experiment=cifar10"))
    assert set(model.heads) == {"cls"} and model.fusion is None
    assert model(torch.randn(2, 3, 32, 32))["cls"]["logits"].shape == (2, 10)


@pytest.mark.slow  # 24 s; the default model's overfit test and the backbone sweep (gradients) stay in make test
def test_lite_overfits_a_handful_of_images(shapes_root):
    """The default model's learning test (tests/engine/test_overfit.py): same data, steps and thresholds."""
    torch.manual_seed(0)
    m = overfit_and_score(build_model(lite_config()), shapes_root)
    assert m["cls/acc"] == 1.0
    assert m["det/map50"] >= 0.9, m
    assert m["inst/map50"] >= 0.8, m
    assert m["sem/miou"] >= 0.8, m
