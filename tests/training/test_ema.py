"""Weight EMA (``ema.enabled``): what validation, the report, the checkpoint readers and export use; resume.

One tiny EMA run (2 epochs x 2 steps, a checkpoint per epoch) serves most tests; ``tiny_run`` (conftest,
EMA off) is today's behaviour."""

from __future__ import annotations

import json
import math

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from safetensors.torch import load_file

import fourm21
from fourm21.errors import ConfigError
from fourm21.inference.checkpoints import load_checkpoint
from fourm21.training.ema import build_ema, ema_multi_avg_fn
from fourm21.training.evaluation import load_module
from fourm21.training.module import MultiTaskModule
from fourm21.training.semi_supervised import SemiSupervisedModule
from tests.conftest import TINY, model_config, run_cli, run_cli_here

LOSS = {"weighting": "fixed", "weights": {"cls": 1.0, "det": 1.0, "inst": 1.0, "sem": 1.0}}
EMA = {"enabled": True, "decay": 0.9, "ramp_steps": 0}
# deterministic, no augmentation: a resumed run must give the uninterrupted run's weights
ARGS = [*TINY, "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=1", "plots=false", "trainer.deterministic=true",
        "data.aug.hflip=0", "data.aug.affine_p=0", "data.aug.color_jitter=0",
        "ema.enabled=true", "ema.decay=0.9", "ema.ramp_steps=0",
        "callbacks.checkpoint.filename='e{epoch}'", "callbacks.checkpoint.save_top_k=-1"]


def _state(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _part(state: dict, prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def _differs(a: dict, b: dict) -> list[str]:
    assert set(a) == set(b)
    return [k for k in a if a[k].is_floating_point() and not torch.allclose(a[k], b[k])]


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ema")
    run_dir = tmp / "run"
    res = run_cli("fourm21-train", [*ARGS, f"paths.data_dir={tmp / 'data'}", f"hydra.run.dir={run_dir}"], tmp)
    assert res.returncode == 0, res.stderr[-3000:]
    best = json.loads((run_dir / "report.json").read_text())
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "e0.ckpt").is_file() and (ckpts / "e1.ckpt").is_file()
    return tmp, run_dir, best


def _best(run_dir):
    """The checkpoint the training report evaluated (ModelCheckpoint's pick by val/score), as report.md names it."""
    line = next(x for x in (run_dir / "report.md").read_text().splitlines() if x.startswith("- **checkpoint**:"))
    return line.split(":", 1)[1].strip()


def test_ramp_follows_its_formula_and_zero_ramp_is_torchs_fixed_decay():
    ema, new = [torch.zeros(3)], [torch.ones(3)]
    ema_multi_avg_fn(0.99, 10)(ema, new, torch.tensor(5))
    d = 0.99 * (1 - math.exp(-5 / 10))
    assert torch.allclose(ema[0], torch.full((3,), 1 - d))
    fixed, ref = [torch.zeros(3)], [torch.zeros(3)]
    ema_multi_avg_fn(0.9, 0)(fixed, new, torch.tensor(5))
    torch.optim.swa_utils.get_ema_multi_avg_fn(0.9)(ref, new, torch.tensor(5))
    assert torch.equal(fixed[0], ref[0])
    with pytest.raises(ConfigError, match="decay"):
        build_ema(torch.nn.Linear(2, 2), 1.0)


def test_one_average_is_the_ema_and_the_mean_teacher():
    semi = {"enabled": True, "teacher": "ema", "ema_decay": 0.99}
    both = SemiSupervisedModule(model=model_config(), loss=LOSS, optim={"lr": 1e-3}, semi=semi, ema=EMA)
    assert both.mean_teacher is both.ema and both.averaged is both.ema and both.inference_net is both.ema.module
    assert not any(k.startswith("teacher.") for k in both.state_dict())
    semi_only = SemiSupervisedModule(model=model_config(), loss=LOSS, optim={"lr": 1e-3}, semi=semi)
    assert semi_only.ema is None and semi_only.mean_teacher is not None and semi_only.inference_net is semi_only.model
    assert any(k.startswith("teacher.module.") for k in semi_only.state_dict())  # today's keys
    plain = MultiTaskModule(model=model_config(), loss=LOSS, optim={"lr": 1e-3})
    assert plain.averaged is None and plain.inference_net is plain.model


def test_resuming_with_ema_switched_on_or_off_loads():
    off = MultiTaskModule(model=model_config(), loss=LOSS, optim={"lr": 1e-3})
    on = MultiTaskModule(model=model_config(), loss=LOSS, optim={"lr": 1e-3}, ema=EMA)
    ckpt = {"state_dict": dict(off.state_dict())}
    on._match_averaged_keys(ckpt)  # an EMA-off checkpoint: the average starts from its weights
    on.load_state_dict(ckpt["state_dict"])
    assert not _differs(_part(on.state_dict(), "ema.module."), _part(off.state_dict(), "model."))
    ckpt = {"state_dict": dict(on.state_dict())}
    off._match_averaged_keys(ckpt)  # an EMA checkpoint resumed without EMA: the average is dropped
    off.load_state_dict(ckpt["state_dict"])


def test_ema_weights_lag_the_trained_weights_and_both_are_saved(ema_run):
    _, run_dir, _ = ema_run
    state = _state(run_dir / "checkpoints" / "last.ckpt")
    assert int(state["ema.n_averaged"]) == 4  # one update per optimiser step: 2 epochs x 2 steps
    assert _differs(_part(state, "ema.module."), _part(state, "model."))
    assert not any(k.startswith("teacher.") for k in state)


def test_every_reader_gets_the_ema_weights(ema_run):
    _, run_dir, _ = ema_run
    best = _best(run_dir)
    state = _state(best)
    ema, raw = _part(state, "ema.module."), _part(state, "model.")
    net, hp = load_checkpoint(best)  # fourm21.load, fourm21-predict, fourm21-export
    assert hp["ema"]["enabled"] and not _differs(net.state_dict(), ema) and _differs(net.state_dict(), raw)
    assert not _differs(fourm21.load(best).net.state_dict(), ema)
    module = load_module(best)  # fourm21-eval
    assert module.inference_net is module.ema.module and not _differs(module.inference_net.state_dict(), ema)
    module.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(module(x)["sem"]["logits"], module.ema.module(x)["sem"]["logits"])


def _validate(module: MultiTaskModule, run_dir) -> dict[str, float]:
    """``module`` validated on the run's val set as training and fourm21-eval do; which network ran is counted."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    dm = instantiate(cfg.data.datamodule)
    dm.setup("validate")
    module.build_evaluators(dm.val_sets)
    calls = {"model": 0, "ema": 0}
    module.model.register_forward_hook(lambda *a: calls.__setitem__("model", calls["model"] + 1))
    if module.ema is not None:
        module.ema.module.register_forward_hook(lambda *a: calls.__setitem__("ema", calls["ema"] + 1))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(run_dir))
    trainer.validate(module, datamodule=dm, verbose=False)
    return {**module.last_metrics, **{f"calls/{k}": v for k, v in calls.items()}}


def test_validation_and_the_report_score_the_ema(ema_run):
    _, run_dir, report = ema_run
    metrics = _validate(load_module(_best(run_dir)), run_dir)
    assert metrics["calls/ema"] > 0 and metrics["calls/model"] == 0
    for key in ("cls/acc", "det/map50", "inst/map50", "sem/miou"):  # the training report scored these weights
        assert report[f"val/{key}"] == pytest.approx(metrics[key], abs=1e-6), key
    assert "moving average (ema.enabled)" in (run_dir / "report.md").read_text()


def test_export_writes_the_ema_weights(ema_run, tmp_path):
    tmp, run_dir, _ = ema_run
    best = _best(run_dir)
    state = _state(best)
    ema, raw = _part(state, "ema.module."), _part(state, "model.")
    res = run_cli_here("fourm21-export", [f"ckpt_path={best}", "format=safetensors", f"hydra.run.dir={tmp_path / 's'}"],
                  tmp)
    assert res.returncode == 0, res.stderr[-3000:]
    exported = load_file(str(tmp_path / "s" / "export" / "model.safetensors"))
    assert not _differs(exported, ema) and _differs(exported, raw)
    res = run_cli_here("fourm21-export", [f"ckpt_path={best}", "format=onnx", "dynamo=false", "verify_batch=1",
                                     f"hydra.run.dir={tmp_path / 'o'}"], tmp)
    assert res.returncode == 0, res.stderr[-3000:]
    import onnxruntime as ort
    session = ort.InferenceSession(str(tmp_path / "o" / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 3, 64, 64)
    names = [o.name for o in session.get_outputs()]
    idx = next(i for i, n in enumerate(names) if "sem" in n)
    got = torch.from_numpy(session.run(None, {"images": x.numpy()})[idx])
    module = load_module(best).eval()
    with torch.no_grad():
        want, trained = module.ema.module(x)["sem"]["logits"], module.model(x)["sem"]["logits"]
    assert torch.allclose(got, want, atol=1e-4) and not torch.allclose(got, trained, atol=1e-4)


def test_resume_restores_the_ema(ema_run):
    tmp, run_dir, _ = ema_run
    resumed = tmp / "resumed"
    res = run_cli("fourm21-train", [*ARGS, f"paths.data_dir={tmp / 'data'}", f"hydra.run.dir={resumed}",
                                    f"ckpt_path={run_dir / 'checkpoints' / 'e0.ckpt'}"], tmp)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = _state(resumed / "checkpoints" / "last.ckpt"), _state(run_dir / "checkpoints" / "last.ckpt")
    assert set(a) == set(b) and int(a["ema.n_averaged"]) == int(b["ema.n_averaged"]) == 4
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst < 1e-6, f"resumed weights or EMA differ from an uninterrupted run by {worst}"


def test_ema_off_is_todays_behaviour(tiny_run, tmp_path):
    work, run_dir, _ = tiny_run
    best = run_dir / "checkpoints" / "best.ckpt"
    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"].get("ema") is None
    assert not any(k.startswith(("ema.", "teacher.")) for k in ckpt["state_dict"])
    raw = _part(ckpt["state_dict"], "model.")
    net, _ = load_checkpoint(best)
    assert not _differs(net.state_dict(), raw)
    module = load_module(best)
    assert module.inference_net is module.model
    metrics = _validate(module, run_dir)
    assert metrics["calls/model"] > 0
    res = run_cli_here("fourm21-export", [f"ckpt_path={best}", "format=safetensors", f"hydra.run.dir={tmp_path / 's'}"],
                  work)
    assert res.returncode == 0, res.stderr[-3000:]
    assert not _differs(load_file(str(tmp_path / "s" / "export" / "model.safetensors")), raw)
