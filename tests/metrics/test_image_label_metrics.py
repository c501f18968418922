import pytest
import torch

from fourm21.metrics.evaluator import metric_key
from fourm21.metrics.image_labels import AttributeMetrics, MultiLabelMetrics, samples_f1, tune_thresholds


def test_threshold_tuning_finds_each_class_cut():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(400, 2, generator=g) > 0.5
    probs = torch.where(target, 0.3 + 0.1 * torch.rand(400, 2, generator=g), 0.1 * torch.rand(400, 2, generator=g))
    probs[:, 1] += 0.5  # class 1 is separable only around 0.6-0.8
    t = tune_thresholds(probs, target, "per_class")
    assert 0.1 <= t[0] < 0.3 and 0.6 <= t[1] < 0.8
    m = MultiLabelMetrics(2, tune="per_class")
    m.update(probs, target.long())
    out = m.compute()
    assert out["f1_micro"] == 1.0 and out["f1_samples"] == 1.0 and out["map"] == pytest.approx(1.0)
    assert torch.equal(m.thresholds, t)
    fixed = MultiLabelMetrics(2, tune="none")
    fixed.update(probs, target.long())
    assert fixed.compute()["f1_micro"] < 1.0  # at 0.5 class 0 is never predicted


def test_samples_f1_and_attribute_metrics():
    pred = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 0]]).bool()
    true = torch.tensor([[1, 0, 0], [0, 0, 0], [0, 0, 1]]).bool()
    assert samples_f1(pred, true) == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)
    am = AttributeMetrics({"colour": 3})
    am.update("colour", torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, -1, 1]))  # -1: missing, not scored
    out = {metric_key("attr", k): v for k, v in am.compute().items()}  # the report's keys under head "attr"
    assert out["attr.colour/acc"] == pytest.approx(2 / 3) and out["attr/acc_mean"] == out["attr.colour/acc"]
