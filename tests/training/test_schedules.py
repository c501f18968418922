"""The learning-rate schedule and the optimiser are built from their config's ``_target_``."""

import json

import pytest
import torch

from fourm21.training.schedules import warmup_cosine
from tests.conftest import TINY, run_cli


def test_warmup_then_cosine_to_the_floor():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, total_steps=100, warmup_frac=0.1, warmup_steps=None, min_lr_ratio=0.02)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # linear over 10 steps
    assert lrs[10] == pytest.approx(1.0) and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[55] == pytest.approx(0.02 + 0.98 * 0.5, abs=1e-6)  # half way down the cosine
    assert opt.param_groups[0]["lr"] == pytest.approx(0.02)  # the floor at the last step
    fixed = warmup_cosine(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 100, 0.1, 3, 0.0)
    assert fixed.get_last_lr()[0] == pytest.approx(1 / 3)  # warmup_steps wins over warmup_frac


def test_the_optimiser_is_swapped_by_its_target(tmp_path):
    run = tmp_path / "run"
    res = run_cli("fourm21-train", [*TINY, "optim.optimizer._target_=torch.optim.SGD", "~optim.optimizer.betas",
                                    "+optim.optimizer.momentum=0.9", "trainer.max_epochs=1", "evaluate=false",
                                    "plots=false", f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={run}"],
                  tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    state = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)["optimizer_states"][0]
    groups = state["param_groups"]
    assert groups[0]["momentum"] == 0.9 and "betas" not in groups[0]  # SGD's state, not AdamW's
    assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0
    assert json.loads((run / "report.json").read_text())["train/loss"] > 0
