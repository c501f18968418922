import pytest
import torch

from fourm21.data.collate import collate_samples
from fourm21.errors import ConfigError
from fourm21.losses.multitask import MultiTaskLoss
from fourm21.models.multitask import build_model
from fourm21.tasks import head_losses
from tests.conftest import model_config


def _samples(with_label=True, with_dense=True, n=2):
    out = []
    for i in range(n):
        s = {"image": torch.randn(3, 64, 64), "meta": {"image_id": i}}
        if with_label:
            s["label"] = i % 4
        if with_dense:
            m = torch.zeros(1, 64, 64, dtype=torch.bool)
            m[0, 10:30, 12:34] = True
            s.update(boxes=torch.tensor([[12.0, 10, 34, 30]]), box_labels=torch.tensor([1]), masks=m,
                     semantic=m[0].long() * 2)
        out.append(s)
    return out


def _grads(model, batch, criterion=None):
    model.zero_grad()
    criterion = criterion or MultiTaskLoss({"cls": 1.0, "det": 1.0, "inst": 1.0, "sem": 1.0})
    losses = head_losses(model, model(batch["image"]), batch)
    total, logs = criterion(losses)
    total.backward()
    return losses, logs, {n: p.grad for n, p in model.named_parameters()}


def test_absent_tasks_are_skipped():
    torch.manual_seed(0)
    model = build_model(model_config())
    # classification-only batch: no detection, mask or semantic loss; those heads get no gradient
    losses, logs, grads = _grads(model, collate_samples(_samples(with_dense=False)))
    assert set(losses) == {"cls"}
    assert grads["heads.cls.fc.weight"] is not None
    assert grads["heads.det.cls_pred.weight"] is None and grads["heads.sem.pred.weight"] is None
    # dense-only batch: no classification loss
    losses, logs, grads = _grads(model, collate_samples(_samples(with_label=False)))
    assert set(losses) == {"det", "inst", "sem"}
    assert set(losses["det"]) == {"cls", "box", "ctr"} and set(losses["inst"]) == {"bce", "dice"}
    assert grads["heads.cls.fc.weight"] is None or grads["heads.cls.fc.weight"].abs().sum() == 0
    assert grads["heads.inst.coef_pred.weight"].abs().sum() > 0
    for parts in losses.values():
        assert all(torch.isfinite(v) for v in parts.values())


def test_mixed_batch_trains_each_task_on_its_own_samples():
    torch.manual_seed(0)
    model = build_model(model_config())
    mixed = _samples(with_dense=False, n=1) + _samples(with_label=False, n=1)
    batch = collate_samples(mixed)
    losses, _, _ = _grads(model, batch)
    assert set(losses) == {"cls", "det", "inst", "sem"}
    # the classification loss equals the loss on the labelled sample alone
    alone = collate_samples(mixed[:1])
    with torch.no_grad():
        full = head_losses(model, model(batch["image"]), batch)["cls"]["ce"]
        single = head_losses(model, model(alone["image"]), alone)["cls"]["ce"]
    torch.testing.assert_close(full, single, rtol=1e-4, atol=1e-5)


def test_weights_and_uncertainty_weighting():
    parts = {"cls": {"ce": torch.tensor(2.0)}, "det": {"cls": torch.tensor(1.0), "box": torch.tensor(0.5)}}
    total, logs = MultiTaskLoss({"cls": 0.5, "det": 2.0})(parts)
    assert total.item() == pytest.approx(0.5 * 2.0 + 2.0 * 1.5)
    assert logs["det/loss"].item() == pytest.approx(1.5) and logs["det/loss_box"].item() == 0.5
    unc = MultiTaskLoss({"cls": 1.0, "det": 1.0}, weighting="uncertainty")
    with torch.no_grad():
        unc.log_vars["cls"].fill_(1.0)
    total, logs = unc(parts)
    expected = 0.5 * (torch.exp(torch.tensor(-1.0)) * 2.0 + 1.0) + 0.5 * 1.5
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    total.backward()
    assert unc.log_vars["cls"].grad is not None and "cls/sigma" in logs


def test_bad_loss_config_names_the_key():
    with pytest.raises(ConfigError, match="loss.weighting"):
        MultiTaskLoss({}, weighting="magic")
    with pytest.raises(ConfigError, match="loss.weights.det"):
        MultiTaskLoss({"det": -1.0})
