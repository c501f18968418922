"""Every export loads without a PyTorch network and decodes with the settings its config holds."""

import numpy as np
import torch

import fourm21
from fourm21.export.formats import export_onnx, write_model_card
from fourm21.inference.model import Fourm21Model
from fourm21.models.multitask import build_model
from tests.conftest import model_config


def test_onnx_export_decodes_with_the_tuned_multilabel_thresholds(tmp_path):
    torch.manual_seed(0)
    cfg = model_config(**{"heads.mlc.enabled": True, "heads.mlc.num_classes": 6, "heads.mlc.text.enabled": False,
                          "heads.det.score_thr": 0.06})
    net = build_model(cfg).eval()
    tuned = torch.tensor([0.05, 0.2, 0.4, 0.5, 0.6, 0.95])  # as threshold tuning on val leaves them
    net.heads["mlc"].thresholds.copy_(tuned)
    model = Fourm21Model.from_net(net, cfg, {"img_size": 64})
    out = tmp_path / "export"
    write_model_card(model, out, 64)
    export_onnx(model, out / "model.onnx", 64)
    loaded = fourm21.load(out)
    assert loaded.net is None  # ONNX Runtime runs it; nothing is rebuilt with random weights
    torch.testing.assert_close(loaded.settings.of("mlc")["thresholds"], tuned)
    image = np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    ref, got = model.predict(image)[0], loaded.predict(image)[0]
    torch.testing.assert_close(got["label_probs"], ref["label_probs"], atol=1e-5, rtol=0)
    assert torch.equal(got["label_set"], ref["label_probs"] > tuned)
    assert len(ref["scores"]) > 0 and torch.equal(got["labels"], ref["labels"])
    torch.testing.assert_close(got["boxes"], ref["boxes"], atol=1e-3, rtol=0)


def test_exports_record_the_input_contract_and_take_pixels(tmp_path):
    """The export's config states what the graph takes (uint8-scale pixels; it normalises inside with the
    network's statistics), and the ONNX graph fed the letterbox's pixels predicts what PyTorch does."""
    import yaml

    from fourm21.models.backbone import INPUT_CONTRACT

    torch.manual_seed(0)
    cfg = model_config(**{"heads.det.score_thr": 0.06, "backbone.mean": [0.4, 0.5, 0.6],
                          "backbone.std": [0.2, 0.25, 0.3]})
    net = build_model(cfg).eval()
    model = Fourm21Model.from_net(net, cfg, {"img_size": 64})
    out = tmp_path / "export"
    write_model_card(model, out, 64)
    export_onnx(model, out / "model.onnx", 64)
    meta = yaml.safe_load((out / "config.yaml").read_text())["meta"]
    assert meta["input"] == INPUT_CONTRACT and meta["mean"] == [0.4, 0.5, 0.6] and meta["std"] == [0.2, 0.25, 0.3]
    image = np.random.default_rng(1).integers(0, 255, (64, 48, 3), dtype=np.uint8)
    batch, _ = model.preprocess(image)
    assert batch.dtype == torch.uint8  # the letterbox hands out pixels; the network normalises
    ref, got = model.predict(image)[0], fourm21.load(out).predict(image)[0]
    assert len(ref["scores"]) > 0 and torch.equal(got["labels"], ref["labels"])
    torch.testing.assert_close(got["boxes"], ref["boxes"], atol=1e-3, rtol=0)
