"""``logger=many`` and ``logger=[mlflow,wandb]``: a short CLI run each; every tracker's own files hold the report's
final metrics and the run's plots. A missing optional package stops with one line naming ``logger=<name>`` and
the pip command."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from tests.conftest import TINY, run_cli

ARGS = [*TINY, "trainer.max_epochs=1", "trainer.num_sanity_val_steps=0", "plots=true"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("logger_data")  # the shapes set is generated once, by the first run


def _train(tmp_path: Path, data_dir: Path, logger: str) -> tuple[Path, dict, list[str]]:
    """Run fourm21-train with ``logger=...``; returns the run dir, its report.json and its PNG plots' names."""
    run_dir = tmp_path / "run"
    res = run_cli("fourm21-train", [*ARGS, f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}",
                                    f"logger={logger}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((run_dir / "report.json").read_text())
    plots = sorted(p.stem for p in run_dir.glob("*.png"))
    assert "val_predictions" in plots
    return run_dir, report, plots


def test_many_writes_csv_and_tensorboard_events_with_the_report_and_plots(tmp_path, data_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, report, plots = _train(tmp_path, data_dir, "many")
    assert (run_dir / "logs" / "metrics.csv").is_file()
    assert "loss_curves" in plots  # drawn from the CSV log
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    assert "val/score" in tags["scalars"]  # Lightning's own curves
    assert events.Scalars("report/val/score")[-1].value == pytest.approx(report["val/score"], rel=1e-5)
    assert events.Scalars("report/time/train_s")[-1].value == pytest.approx(report["time/train_s"], rel=1e-5)
    assert sorted(tags["images"]) == [f"plots/{p}" for p in plots]
    assert events.Images("plots/val_predictions")[-1].width > 0


@pytest.fixture(scope="module")
def trackers_run(tmp_path_factory, data_dir) -> tuple[Path, dict, list[str]]:
    """One run for both optional trackers, ``logger=[mlflow,wandb]`` (the list form the docs show): a run per
    tracker would double the time, MLflow's database set-up and wandb's service start being most of it."""
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    tmp = tmp_path_factory.mktemp("trackers")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # nothing written to the home dir
            mp.setenv(var, str(tmp / var.lower()))
        mp.delenv("WANDB_MODE", raising=False)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        return _train(tmp, data_dir, "[mlflow,wandb]")


def test_mlflow_stores_the_run_in_the_run_dir(trackers_run):
    from mlflow.tracking import MlflowClient

    run_dir, report, plots = trackers_run
    client = MlflowClient(f"sqlite:///{run_dir}/mlflow.db")
    experiment = client.get_experiment_by_name("fourm21")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "train"
    assert run.data.metrics["report/val/score"] == pytest.approx(report["val/score"], rel=1e-6)
    assert "val/score" in run.data.metrics
    artifacts = {a.path for d in ("plots", "report") for a in client.list_artifacts(run.info.run_id, d)}
    assert artifacts == {*(f"plots/{p}.png" for p in plots), "report/report.json", "report/report.md"}
    assert (run_dir / "mlartifacts" / run.info.run_id / "artifacts" / "plots" / "val_predictions.png").is_file()


def _wandb_history(path: Path) -> dict[str, str]:
    """Every history value (``key -> JSON``) in an offline run's ``run-<id>.wandb``: a LevelDB-style log of
    protobuf records (7-byte file header, 32 KiB blocks, each chunk behind a crc32/length/type header)."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", path
    pos, chunk, history = 7, b"", {}
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            if record.WhichOneof("record_type") == "history":
                history.update({item.key or "/".join(item.nested_key): item.value_json
                                for item in record.history.item})
    return history


def test_wandb_offline_keeps_the_run_in_the_run_dir(trackers_run):
    run_dir, report, plots = trackers_run
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    (log,) = offline.glob("run-*.wandb")
    history = _wandb_history(log)
    assert float(history["report/val/score"]) == pytest.approx(report["val/score"], rel=1e-6)
    assert "val/score" in history
    for plot in plots:
        assert json.loads(history[f"plots/{plot}/_type"]) == "image-file"
        assert (offline / "files" / json.loads(history[f"plots/{plot}/path"])).is_file()


@pytest.mark.parametrize("logger, module", [("mlflow", "mlflow"), ("mlflow", "sqlalchemy"), ("wandb", "wandb"),
                                            ("tensorboard", "tensorboard")])
def test_a_missing_package_is_one_line_naming_the_logger_and_the_pip_command(tmp_path, monkeypatch, capsys,
                                                                             logger, module):
    from fourm21.engine.common import CONFIG_DIR, friendly_errors
    from fourm21.engine.train import build_loggers

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"logger={logger}"]
                      + ([f"logger.mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"] if logger == "mlflow" else []))
    if module == "sqlalchemy":
        pytest.importorskip("mlflow")  # mlflow itself is checked first
    monkeypatch.setitem(sys.modules, module, None)  # `import <module>` now raises ImportError
    with pytest.raises(SystemExit) as exit_info:
        friendly_errors(build_loggers)(cfg, tmp_path)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"fourm21: ConfigError: logger={logger}: the '{module}' package is not installed")
    assert "pip install" in err and module.split(".")[0] in err.split("pip install", 1)[1]
    assert not list(tmp_path.iterdir())  # stopped before any logger wrote a file


def test_a_refused_tracking_uri_is_one_line(tmp_path, monkeypatch, capsys):
    """MLflow 3 refuses the old ``file:`` store (unless MLFLOW_ALLOW_FILE_STORE=true): one line, not a traceback."""
    pytest.importorskip("mlflow")
    from fourm21.engine.common import CONFIG_DIR, friendly_errors
    from fourm21.engine.train import build_loggers

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["logger=mlflow", f"logger.mlflow.tracking_uri=file:{tmp_path}",
                                                      f"logger.mlflow.artifact_location={tmp_path}"])
    with pytest.raises(SystemExit):
        friendly_errors(build_loggers)(cfg, tmp_path)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fourm21: ConfigError: logger.mlflow: MlflowException: "), err
