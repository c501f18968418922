"""The end-to-end graph's module (before export): the one decoder's outputs, max_det per image."""

import torch

from fourm21.export.end2end import EndToEnd
from fourm21.inference.decode import DecodeSettings, decode
from fourm21.inference.model import Fourm21Model
from fourm21.models.multitask import build_model
from tests.conftest import model_config


def test_end2end_keeps_at_most_max_det_per_image_the_same_as_the_per_image_split():
    torch.manual_seed(0)
    net = build_model(model_config(**{"heads.det.max_det": 3, "heads.det.score_thr": 0.0,
                                      "heads.sem.label_stride": 2})).eval()
    images = torch.randn(3, 3, 64, 64)
    wrapper = EndToEnd(net)
    with torch.no_grad():
        out = dict(zip(wrapper.names, wrapper(images)))
        ref = decode(net(images), (64, 64), DecodeSettings.from_net(net))
    counts = torch.bincount(out["det_batch_index"], minlength=3)
    assert counts.tolist() == [3, 3, 3]  # random weights score every candidate above 0: capped, per image
    for i, p in enumerate(ref):
        sel = out["det_batch_index"] == i
        assert torch.allclose(out["det_scores"][sel].sort(descending=True).values, p["scores"], atol=1e-5)
        assert torch.allclose(out["det_boxes"][sel][out["det_scores"][sel].argsort(descending=True)], p["boxes"],
                              atol=1e-4)
    assert torch.equal(out["sem_labels"], torch.stack([p["semantic"] for p in ref]))
    assert out["det_mask_logits"].shape == (9, 32, 32)


def test_onnx_export_leaves_the_network_in_eval_mode(tmp_path):
    """The TorchScript exporter restores its wrapper's mode onto every submodule afterwards: a wrapper
    in training mode left BatchNorm in training mode, and the export check then compared the graph with
    batch-statistics outputs (seen as 'same kept boxes: False' on the BatchNorm lite model)."""
    from fourm21.export.formats import export_onnx, export_onnx_end2end

    cfg = model_config()
    model = Fourm21Model.from_net(build_model(cfg).eval(), cfg, {"img_size": 64})
    export_onnx_end2end(model, tmp_path / "e2e.onnx", 64)
    assert not any(m.training for m in model.net.modules())
    export_onnx(model, tmp_path / "raw.onnx", 64)
    assert not any(m.training for m in model.net.modules())
