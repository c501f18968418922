"""``fourm21.models.neck``: the norm choice (``model.norm``) and the towers the dense heads share over levels."""

import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from fourm21.errors import ConfigError
from fourm21.export import formats
from fourm21.inference.model import Fourm21Model
from fourm21.models.multitask import build_model
from fourm21.models.neck import SharedTower, conv_norm_act
from tests.models.test_lite import lite_config


def test_group_norm_tower_keeps_the_keys_of_the_sequential_it_replaced():
    """Checkpoints written before the towers took a level keep loading."""
    old = nn.Sequential(*[conv_norm_act(16, 16, separable=True) for _ in range(2)])
    new = SharedTower(16, 2, levels=3, separable=True)
    assert list(new.state_dict()) == list(old.state_dict())
    new.load_state_dict(old.state_dict())
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(new(x, 2), old(x))  # GroupNorm: one tower for every level


def test_batch_norm_tower_shares_convolutions_and_keeps_statistics_per_level():
    torch.manual_seed(0)
    tower = SharedTower(8, 2, levels=3, norm="batch").train()
    convs = [p for n, p in tower.named_parameters() if "level_norms" not in n and p.dim() == 4]
    assert len(convs) == 2  # one convolution per block, whichever level runs it
    for _ in range(20):
        tower(torch.randn(4, 8, 6, 6) + 3, 0)
        tower(torch.randn(4, 8, 6, 6) - 3, 1)
    level0, level1 = getattr(tower, "0")[1], tower.level_norms[0][0]
    assert isinstance(level0, nn.BatchNorm2d) and isinstance(level1, nn.BatchNorm2d)
    assert not torch.allclose(level0.running_mean, level1.running_mean, atol=0.1)
    assert torch.equal(tower.level_norms[0][1].running_mean, torch.zeros(8))  # level 2 never ran
    tower.eval()
    x = torch.randn(2, 8, 6, 6)
    assert not torch.allclose(tower(x, 0), tower(x, 1))  # each level normalised with its own statistics


def test_an_unknown_norm_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match=r"model\.norm must be one of \('group', 'batch'\), got 'layer'"):
        build_model(lite_config("model.norm=layer"))


def test_lite_uses_batch_norm_and_its_export_folds_every_norm(tmp_path):
    """model=lite: BatchNorm in the neck and heads, so the graph a runtime runs has no normalisation layer left."""
    cfg = lite_config()
    net = build_model(cfg)
    kinds = {type(m) for name, m in net.named_modules() if not name.startswith("backbone")}
    assert nn.BatchNorm2d in kinds and nn.GroupNorm not in kinds
    model = Fourm21Model.from_net(net.eval(), cfg, {"img_size": 64})
    formats.export_onnx(model, tmp_path / "model.onnx", 64)
    opts = ort.SessionOptions()  # the graph ONNX Runtime runs, after its optimisations (conv + BatchNorm fusion)
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(tmp_path / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert "Conv" in ops or "FusedConv" in ops
    assert not ops & {"BatchNormalization", "GroupNormalization", "InstanceNormalization"}, ops
