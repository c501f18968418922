"""``trainer.precision=auto``: bf16-mixed where the CPU has AMX, else fp32; a given precision is kept."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

import fourm21.engine.common as common


@pytest.mark.parametrize("amx, expected", [(True, "bf16-mixed"), (False, "32-true")])
def test_trainer_precision_auto_follows_the_cpu(monkeypatch, amx, expected):
    monkeypatch.setattr(common, "cpu_has_amx", lambda: amx)
    cfg = OmegaConf.create({"trainer": {"accelerator": "cpu", "precision": "auto"}})
    common.resolve_precision(cfg)
    assert cfg.trainer.precision == expected
    given = OmegaConf.create({"trainer": {"accelerator": "cpu", "precision": "32-true"}})
    common.resolve_precision(given)
    assert given.trainer.precision == "32-true"  # a precision the user gives is kept
