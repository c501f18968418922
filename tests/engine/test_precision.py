"""``trainer.precision=auto``: bf16-mixed where bf16 autocast trains faster on this CPU (AMX: always; AVX-512 BF16
without AMX: a probe, cached per CPU; no bf16 instructions: never), else fp32; a given precision is kept."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

import fourm21.engine.common as common


def _auto() -> str:
    cfg = OmegaConf.create({"trainer": {"accelerator": "cpu", "precision": "auto"}})
    common.resolve_precision(cfg)
    return cfg.trainer.precision


@pytest.fixture
def cpu(monkeypatch, tmp_path):
    """A CPU of the kind asked for, an empty cache and a probe that counts its calls."""
    monkeypatch.delenv("FOURM21_CPU_BF16", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []

    def kind(amx: bool, bf16: bool, times: tuple[float, float] = (1.0, 1.0)) -> list:
        monkeypatch.setattr(common, "cpu_has_amx", lambda: amx)
        monkeypatch.setattr(common, "cpu_has_bf16", lambda: bf16)
        monkeypatch.setattr(common, "_probe_step_times", lambda: calls.append(1) or times)
        return calls
    return kind


def test_amx_is_bf16_and_no_bf16_instructions_is_fp32_without_a_probe(cpu):
    calls = cpu(amx=True, bf16=True)
    assert _auto() == "bf16-mixed"
    cpu(amx=False, bf16=False)
    assert _auto() == "32-true" and calls == []
    given = OmegaConf.create({"trainer": {"accelerator": "cpu", "precision": "32-true"}})
    common.resolve_precision(given)
    assert given.trainer.precision == "32-true"  # a precision the user gives is kept


@pytest.mark.parametrize("times, expected", [((0.10, 0.06), "bf16-mixed"), ((0.10, 0.095), "32-true")])
def test_avx512_bf16_without_amx_is_decided_by_the_probe_once(cpu, tmp_path, times, expected):
    calls = cpu(amx=False, bf16=True, times=times)
    assert _auto() == expected and len(calls) == 1
    assert _auto() == expected and len(calls) == 1  # cached: no second probe
    cached = json.loads((tmp_path / "fourm21" / "cpu_bf16.json").read_text())
    (entry,) = cached.values()
    assert entry["bf16"] == (expected == "bf16-mixed") and entry["fp32_ms"] == times[0] * 1e3


def test_the_environment_decides_without_a_probe(cpu, monkeypatch):
    calls = cpu(amx=False, bf16=True, times=(0.1, 0.01))
    monkeypatch.setenv("FOURM21_CPU_BF16", "0")
    assert _auto() == "32-true"
    monkeypatch.setenv("FOURM21_CPU_BF16", "1")
    assert _auto() == "bf16-mixed" and calls == []


def test_the_real_probe_times_both_and_leaves_the_random_state():
    import torch
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    fp32_s, bf16_s = common._probe_step_times(iters=1)
    assert fp32_s > 0 and bf16_s > 0 and torch.equal(torch.rand(3), expected)
