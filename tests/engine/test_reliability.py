"""Interruption and numerical faults: non-finite steps skipped, determinism, kill-and-resume."""

import json
import os
import signal
import subprocess
import time

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fourm21.data.samplers import ResumableSampler
from fourm21.errors import TrainingError
from fourm21.training.callbacks import NonFiniteGuard
from tests.conftest import BIN, TINY, assert_trained, run_cli, run_cli_here


class _Toy(L.LightningModule):
    """A linear model whose loss is NaN on the steps listed in ``nan_steps``; records weights after each step."""

    def __init__(self, nan_steps: set[int]) -> None:
        super().__init__()
        self.net = nn.Linear(4, 1)
        self.nan_steps = nan_steps
        self.weights: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        return loss * float("nan") if self.global_step in self.nan_steps else loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.weights.append(self.net.weight.detach().clone())

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.1)


def _fit(module: L.LightningModule, guard: NonFiniteGuard, steps: int, tmp_path) -> L.Trainer:
    data = TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    trainer = L.Trainer(max_steps=steps, callbacks=[guard], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        default_root_dir=str(tmp_path), gradient_clip_val=1.0)
    trainer.fit(module, DataLoader(data, batch_size=8))
    return trainer


def test_nonfinite_steps_are_skipped_and_counted(tmp_path):
    module = _Toy(nan_steps={2, 3})
    guard = NonFiniteGuard(max_in_row=5)
    _fit(module, guard, steps=6, tmp_path=tmp_path)
    w = module.weights
    assert guard.skipped == 2 and guard.in_row == 0
    # the NaN steps left the weights as they were; the finite ones around them moved them
    assert torch.equal(w[1], w[2]) and torch.equal(w[2], w[3])
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[3], w[4])
    assert all(torch.isfinite(x).all() for x in w)


def test_too_many_nonfinite_steps_in_a_row_stop_the_run(tmp_path):
    module = _Toy(nan_steps=set(range(1, 100)))
    guard = NonFiniteGuard(max_in_row=3)
    with pytest.raises(TrainingError, match="3 non-finite losses/gradients in a row"):
        _fit(module, guard, steps=20, tmp_path=tmp_path)
    assert torch.isfinite(module.net.weight).all()


def test_resumable_sampler_continues_the_killed_epoch():
    full = ResumableSampler(20, seed=3)
    full.set_epoch(2)
    order = list(full)
    assert sorted(order) == list(range(20)) and order != list(range(20))
    resumed = ResumableSampler(20, seed=3)
    resumed.resume_at(epoch=2, consumed=8)
    assert list(resumed) == order[8:]
    assert list(resumed) == order  # the skip applies to one pass only
    resumed.set_epoch(3)
    assert list(resumed) != order and len(resumed) == 20


def _metrics(run_dir) -> dict:
    report = json.loads((run_dir / "report.json").read_text())
    return {k: v for k, v in report.items() if not k.startswith("time/")}


@pytest.mark.slow  # 15 s; the kill-and-resume test below needs determinism too (resumed == uninterrupted weights)
def test_deterministic_runs_give_identical_metrics(tmp_path):
    reports = []
    for name in ("a", "b"):
        run_dir = tmp_path / name
        res = run_cli("fourm21-train", [*TINY, f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={run_dir}",
                                        "trainer.deterministic=true", "seed=7", "trainer.max_epochs=2", "plots=false",
                                        "trainer.check_val_every_n_epoch=1"],
                      tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
        reports.append(_metrics(run_dir))
    assert reports[0] == reports[1]
    assert "train/nonfinite_skipped" in reports[0]
    assert_trained(tmp_path / "a")  # two runs that learned nothing would agree as well


def _global_step(path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def test_sigkilled_run_resumes_from_last_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    args = [*TINY, "data.generate.num_train=32", "data.datamodule.batch_size=4", "trainer.max_epochs=3",
            "callbacks.snapshot.every_n_train_steps=3", "trainer.check_val_every_n_epoch=3", "plots=false",
            "trainer.deterministic=true", "data.aug.mosaic=0.5", "data.aug.close_mosaic=1",  # augmentation on
            f"paths.data_dir={tmp_path / 'data'}"]
    last = run_dir / "checkpoints" / "last.ckpt"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.Popen([str(BIN / "fourm21-train"), *args, f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if last.is_file() and _global_step(last) >= 3:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed_at = _global_step(last)
            break
        time.sleep(0.2)
    assert killed_at is not None, "the run finished (or hung) before a mid-run checkpoint could be killed"
    assert killed_at < 24  # 3 epochs x 8 steps
    snapshot = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]

    res = run_cli("fourm21-train", [*args, f"hydra.run.dir={run_dir}", "ckpt_path=last"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert _global_step(last) == 24  # the resumed run stopped where an uninterrupted one does
    assert (run_dir / "report.json").is_file()

    ref = tmp_path / "ref"
    res = run_cli("fourm21-train", [*args, f"hydra.run.dir={ref}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    a = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    b = torch.load(ref / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst < 1e-6, f"resumed weights differ from an uninterrupted run by {worst}"
    # and the resumed run trained: two runs whose optimiser did nothing would agree as well
    moved = max((a[k].float() - snapshot[k].float()).abs().max().item() for k in a if k.startswith("model."))
    assert moved > 1e-3, f"the weights moved by only {moved} in the {24 - killed_at} resumed steps"


def test_resume_without_a_checkpoint_names_the_directory(tmp_path):
    res = run_cli_here("fourm21-train", [*TINY, f"paths.data_dir={tmp_path / 'data'}", "ckpt_path=last",
                                    f"hydra.run.dir={tmp_path / 'fresh'}"], tmp_path)
    assert res.returncode == 2
    assert "ckpt_path" in res.stderr and "fresh" in res.stderr and "Traceback" not in res.stderr
