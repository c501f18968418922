import torch

from fourm21.data.collate import collate_samples
from fourm21.inference.decode import DecodeSettings, decode
from fourm21.models.multitask import build_model
from fourm21.tasks import head_losses
from tests.conftest import model_config

DENSE_OFF = {"heads.det.enabled": False, "heads.inst.enabled": False, "heads.sem.enabled": False,
             "heads.cls.enabled": False, "fusion.enabled": False}


def test_attribute_heads_by_config_and_missing_values_are_ignored():
    cfg = model_config(**DENSE_OFF, **{"heads.attr.enabled": True, "heads.attr.groups": {"colour": 3, "size": 2}})
    model = build_model(cfg)
    samples = [{"image": torch.randn(3, 64, 64), "attributes": {"colour": 2, "size": -1}, "meta": {}},
               {"image": torch.randn(3, 64, 64), "attributes": {"colour": 0, "size": -1}, "meta": {}}]
    batch = collate_samples(samples)
    out = model(batch["image"])
    assert out["attr"]["colour"].shape == (2, 3) and out["attr"]["size"].shape == (2, 2)
    losses = head_losses(model, out, batch)
    assert set(losses["attr"]) == {"colour"}  # 'size' is missing on every image: no loss, no gradient
    losses["attr"]["colour"].backward()
    assert model.heads.attr.fc["size"].weight.grad is None
    assert model.heads.attr.fc["colour"].weight.grad.abs().sum() > 0
    preds = decode(out, (64, 64), DecodeSettings.from_net(model))
    assert preds[0]["attr.colour.probs"].shape == (3,) and preds[0]["attr.size.label"].ndim == 0
    # adding a group is one config entry
    more = build_model(model_config(**DENSE_OFF, **{"heads.attr.enabled": True,
                                                    "heads.attr.groups": {"colour": 3, "size": 2, "season": 4}}))
    assert set(more(batch["image"])["attr"]) == {"colour", "size", "season"}


def test_multilabel_head_with_and_without_caption_fusion():
    tokens = torch.randint(1, 100, (2, 6))
    images = torch.randn(2, 3, 64, 64)
    for fusion in ("concat", "attention"):
        model = build_model(model_config(**DENSE_OFF, **{"heads.mlc.enabled": True, "heads.mlc.num_classes": 5,
                                                         "heads.mlc.text.fusion": fusion}))
        model.eval()
        with_text = model(images, tokens)["mlc"]["logits"]
        other_text = model(images, torch.randint(1, 100, (2, 6)))["mlc"]["logits"]
        assert with_text.shape == (2, 5) and not torch.allclose(with_text, other_text)  # the caption matters
        assert model(images)["mlc"]["logits"].shape == (2, 5)  # no caption: still runs (exports take images only)
    plain = build_model(model_config(**DENSE_OFF, **{"heads.mlc.enabled": True, "heads.mlc.num_classes": 5,
                                                     "heads.mlc.text.enabled": False}))
    plain.eval()
    torch.testing.assert_close(plain(images, tokens)["mlc"]["logits"], plain(images)["mlc"]["logits"])
    assert "heads.mlc.thresholds" in plain.state_dict()  # tuned thresholds travel with the weights
    preds = decode(plain(images), (64, 64), DecodeSettings.from_net(plain))
    assert preds[0]["label_set"].dtype == torch.bool and preds[0]["label_probs"].shape == (5,)
