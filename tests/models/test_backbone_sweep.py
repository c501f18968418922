"""Every timm family the README lists trains in the one network: build, forward, every head's loss, backward.

Small models (timm's smallest variant of each family, random weights) at 64 px, so the sweep runs in
about a minute on a CPU. A family that cannot work stops with one line naming the backbone.
"""

from __future__ import annotations

import pytest
import torch

from fourm21.data.coco import CocoDataset
from fourm21.data.collate import collate_samples
from fourm21.data.transforms import build_dense_transform
from fourm21.errors import ConfigError
from fourm21.losses.multitask import MultiTaskLoss
from fourm21.models.backbone import TimmBackbone
from fourm21.models.multitask import build_model
from fourm21.tasks import head_losses
from tests.conftest import model_config

# (timm name, what it is): convolutional, hybrid and transformer families, hierarchical and plain.
FAMILIES = [
    ("convnext_atto", "ConvNeXt"),
    ("resnet18", "ResNet"),
    ("efficientnet_b0", "EfficientNet"),
    ("mobilenetv3_small_050", "MobileNetV3"),
    ("mobilenetv4_conv_small", "MobileNetV4"),
    ("regnetx_002", "RegNet"),
    ("ghostnet_100", "GhostNet"),
    ("edgenext_xx_small", "EdgeNeXt"),
    ("repvit_m1", "RepViT"),
    ("fastvit_t8", "FastViT"),
    ("efficientvit_b0", "EfficientViT (MIT)"),
    ("mobilevitv2_050", "MobileViTv2"),
    ("tiny_vit_5m_224", "TinyViT"),
    ("levit_128s", "LeViT (strides 16-64)"),
    ("swin_tiny_patch4_window7_224", "Swin"),
    ("maxvit_tiny_tf_224", "MaxViT"),
    ("vit_tiny_patch16_224", "ViT (simple pyramid)"),
    ("deit_tiny_patch16_224", "DeiT (simple pyramid)"),
]
SIZE = 64


@pytest.fixture(scope="module")
def batch(shapes_root):
    ds = CocoDataset(shapes_root / "images", shapes_root / "annotations/instances_train.json",
                     build_dense_transform(SIZE, train=False), semantic_dir=shapes_root / "semantic")
    return collate_samples([ds[i] for i in range(2)])


def _backbone(name: str) -> dict:
    return {"name": name, "pretrained": False, "checkpoint": None, "out_indices": None, "img_size": SIZE,
            "drop_path_rate": 0.0}


@pytest.mark.parametrize("name", [n for n, _ in FAMILIES], ids=[n for n, _ in FAMILIES])
def test_backbone_trains_every_head(name, batch):
    torch.manual_seed(0)
    try:
        strides = [s for s in TimmBackbone(**_backbone(name)).strides if s >= 8][:3]  # what the model reports
        model = build_model(model_config(_backbone(name), **{"heads.det.strides": strides,
                                                             "heads.sem.strides": strides}))
    except ConfigError as e:  # a family that cannot work says so in one line naming it
        assert name in str(e) and "\n" not in str(e)
        pytest.fail(f"{name} does not build: {e}")
    out = model(batch["image"])
    assert out["sem"]["logits"].shape[-2:] == (SIZE // strides[0], SIZE // strides[0])
    losses = head_losses(model, out, batch)
    assert set(losses) == {"cls", "det", "inst", "sem"}
    total, _ = MultiTaskLoss({k: 1.0 for k in losses})(losses)
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads[:1]) and any(g.abs().sum() > 0 for g in grads if g is not None)


def test_a_backbone_without_the_head_strides_stops_with_one_line_naming_it():
    """CrossViT reports strides 12 and 17: no level the detection head (stride 8) can read."""
    with pytest.raises(ConfigError) as err:
        build_model(model_config(_backbone("crossvit_tiny_240")))
    message = str(err.value)
    assert "\n" not in message and "crossvit_tiny_240" in message and "model.heads." in message


def test_channels_last_features_are_turned_channels_first():
    bb = TimmBackbone(**_backbone("swin_tiny_patch4_window7_224"))
    assert bb.nhwc and bb.strides == [4, 8, 16, 32]
    for f, c, s in zip(bb(torch.randn(1, 3, SIZE, SIZE)), bb.channels, bb.strides):
        assert f.shape == (1, c, SIZE // s, SIZE // s)
