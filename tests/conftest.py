"""Shared fixtures: a tiny shapes data set and a tiny network config, so tests run in seconds on a CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from fourm21.data.shapes import ensure_shapes

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# A ConvNeXt shrunk through timm's own kwargs: same code path as convnext_atto, a fraction of the cost.
TINY_CONVNEXT = {"name": "convnext_atto", "pretrained": False, "checkpoint": None, "out_indices": None,
                 "img_size": 64, "drop_path_rate": 0.0, "dims": [16, 32, 48, 64], "depths": [1, 1, 1, 1]}
TINY_VIT = {"name": "vit_tiny_patch16_224", "pretrained": False, "checkpoint": None, "out_indices": None,
            "img_size": 64, "drop_path_rate": 0.0, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 2}


# Under pytest-xdist (``make test`` runs one worker per core) each worker and the CLIs it starts get one
# thread, so the workers do not fight over the cores; run alone, a test gets the machine's two.
TEST_THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2
if TEST_THREADS == 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the CLI subprocesses


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(TEST_THREADS)


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    return ensure_shapes(root, num_train=24, num_val=12, size=64, max_objects=4, seed=3)


def model_config(backbone: dict | None = None, **head_overrides) -> dict:
    """The default model config (fourm21/configs/model/multitask.yaml) with a tiny backbone and narrow neck."""
    cfg = OmegaConf.load(REPO / "fourm21" / "configs" / "model" / "multitask.yaml")
    cfg.pop("defaults")
    cfg.backbone = dict(backbone or TINY_CONVNEXT)
    cfg.neck.channels = 32
    data = OmegaConf.create({"data": {"num_classes": 3, "num_image_classes": 4}})
    merged = OmegaConf.merge(data, {"model": cfg})
    for key, value in head_overrides.items():
        OmegaConf.update(merged, f"model.{key}", value)
    return OmegaConf.to_container(merged.model, resolve=True)


BIN = Path(sys.executable).parent
# the shapes config's training augmentation (data/shapes.yaml data.aug), for tests that build pipelines in code
AUG = {"hflip": 0.5, "scale": (0.9, 1.1), "translate": 0.05, "affine_p": 0.5, "color_jitter": 0.2}

TINY = ["data.generate.num_train=16", "data.generate.num_val=8", "data.datamodule.batch_size=8",
        "+model.backbone.dims=[16,32,48,64]", "+model.backbone.depths=[1,1,1,1]", "model.neck.channels=32",
        "trainer.enable_model_summary=false", "plots=false",  # the runs that check plots turn them on
        "trainer.precision=32-true"]  # not auto: the same arithmetic on CPUs with and without AMX (CI has none)


def run_cli(script: str, args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a console script as a user would; returns the finished process (output captured)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([str(BIN / script), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def run_cli_here(script: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``run_cli`` in this process: the console script's entry point called with ``args`` as its argv, its
    output captured, its exit code returned the same way. For runs that stop at an error, where a fresh
    interpreter (~8 s of imports per call) is not what the test is about; ``run_cli`` stays for the runs
    that train, and for the tests of the console scripts themselves."""
    import contextlib
    import io
    import logging
    import logging.config
    import traceback
    import warnings
    from importlib.metadata import entry_points
    from unittest import mock

    (entry,) = entry_points(group="console_scripts", name=script)
    main = entry.load()

    def clear_handlers_without_closing() -> None:
        """Hydra's logging set-up (``dictConfig``) closes every live handler of the process first; absl's
        (imported with NNCF) closes its stream then, which here is pytest's captured stderr."""
        logging._handlers.clear()
        del logging._handlerList[:]

    out, err = io.StringIO(), io.StringIO()
    argv, here, root = sys.argv, Path.cwd(), logging.getLogger()
    handlers, level = root.handlers[:], root.level
    code = 0
    try:
        sys.argv = [script, *args]
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings(), \
                mock.patch.object(logging.config, "_clearExistingHandlers", clear_handlers_without_closing):
            warnings.simplefilter("ignore")  # as run_cli's PYTHONWARNINGS=ignore
            try:
                main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
            except Exception:  # what the interpreter would print before exiting 1
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = argv
        os.chdir(here)
        root.handlers[:] = handlers  # Hydra's job logging pointed them at the captured streams
        root.setLevel(level)
    return subprocess.CompletedProcess([script, *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One short real training run through the CLI (2 epochs on tiny shapes, validated every epoch).

    Returns (work dir, run dir, finished process); the run dir holds checkpoints/{best,last}.ckpt and the
    report. Under pytest-xdist the workers share one run (the first to get the lock trains, the others
    read it), so the tests that use it read it and write elsewhere."""
    import json

    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the workers' common folder
    tmp = shared / "tiny_run"
    run_dir, done = tmp / "run", shared / "tiny_run.json"
    with FileLock(str(shared / "tiny_run.lock")):
        if not done.is_file():
            tmp.mkdir(exist_ok=True)
            res = run_cli("fourm21-train", [*TINY, f"paths.data_dir={tmp / 'data'}", f"hydra.run.dir={run_dir}",
                                            "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=1",
                                            "plots=true"], tmp)
            assert res.returncode == 0, res.stderr[-3000:]
            done.write_text(json.dumps({"args": res.args, "stdout": res.stdout, "stderr": res.stderr}))
        saved = json.loads(done.read_text())
    return tmp, run_dir, subprocess.CompletedProcess(saved["args"], 0, saved["stdout"], saved["stderr"])


def val_losses(run_dir: Path) -> list[float]:
    """The sum of the heads' ``val/<head>/loss`` after each validated training epoch of a run (in epoch order),
    from its logs/metrics.csv; the final evaluation, logged there too, is left out."""
    import csv
    import re

    rows = list(csv.DictReader((run_dir / "logs" / "metrics.csv").open()))
    trained_epochs = {r["epoch"] for r in rows if r.get("train/loss_epoch")}
    by_epoch = {}
    for r in rows:
        heads = [float(v) for k, v in r.items() if v and re.fullmatch(r"val/[^/]+/loss", k)]
        if heads and r["epoch"] in trained_epochs:
            by_epoch[int(r["epoch"])] = sum(heads)
    return [by_epoch[e] for e in sorted(by_epoch)]


def assert_trained(run_dir: Path, factor: float = 0.95) -> None:
    """The run learned something: the same val images cost less after its last validated epoch than after
    its first. A run whose optimiser did nothing scores them identically (eval mode, no augmentation)."""
    losses = val_losses(run_dir)
    assert len(losses) >= 2, f"{run_dir}: validated {len(losses)} training epoch(s), need two to compare"
    assert losses[-1] < factor * losses[0], f"{run_dir}: val loss {losses[0]:.4f} -> {losses[-1]:.4f}"


def evaluator(dataset, *heads: str, net=None):
    """The evaluator training builds (``fourm21.inference.results.build_evaluator``) for ``net``'s heads, or for
    a tiny network with only ``heads`` enabled (3 object classes, 4 image classes)."""
    from fourm21.inference.decode import DecodeSettings
    from fourm21.inference.results import build_evaluator
    from fourm21.models.multitask import build_model

    if net is None:
        off = {f"heads.{h}.enabled": False for h in ("cls", "det", "inst", "sem") if h not in heads}
        net = build_model(model_config(**off, **({"fusion.enabled": False} if "cls" not in heads else {})))
    settings = DecodeSettings.from_net(net)
    return build_evaluator(settings, {n: [net.heads[n]] for n in settings.tasks}, dataset, tune=True)
