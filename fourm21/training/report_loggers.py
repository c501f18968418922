"""The experiment loggers beyond CSV (TensorBoard, MLflow, wandb): their optional packages, and the final report.

Lightning logs the training curves; ``log_report`` adds what only exists after the run, the report's metrics
(as ``report/<key>``) and the run dir's PNG plots, to every logger that can hold them. The CSV logger is left
alone: report.json and the plots already lie next to its metrics.csv.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from omegaconf import DictConfig
from PIL import Image

from fourm21.errors import ConfigError, one_line

MLFLOW_PIP = "pip install mlflow-skinny sqlalchemy alembic"  # or the full `mlflow`; sqlalchemy: the sqlite store
NEEDS = {  # Lightning logger class -> (modules it imports, the command that installs them)
    "TensorBoardLogger": (("tensorboard",), "pip install tensorboard"),
    "MLFlowLogger": (("mlflow",), MLFLOW_PIP),
    "WandbLogger": (("wandb",), "pip install wandb"),
}
DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")  # MLflow stores behind SQLAlchemy
TRACKER_PACKAGES = ("mlflow", "wandb")  # their exceptions at construction are set-up problems (URI, project)


def check_logger_packages(key: str, lg_cfg: DictConfig) -> None:
    """A ConfigError naming ``logger=<key>`` and the pip command when the logger's package is not importable."""
    cls = str(lg_cfg._target_).rsplit(".", 1)[-1]
    modules, pip = NEEDS.get(cls, ((), ""))
    if cls == "MLFlowLogger" and str(lg_cfg.get("tracking_uri") or "").split(":")[0].split("+")[0] in DB_SCHEMES:
        modules = (*modules, "sqlalchemy", "alembic")
    for module in modules:
        _require(key, module, pip)


def _require(key: str, module: str, pip: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"logger={key}: the '{module}' package is not installed; {pip} "
                          f"(or train without it, e.g. logger=csv)") from None


def tracker_error(key: str, exc: BaseException) -> ConfigError | None:
    """The one-line ConfigError for an MLflow / wandb exception behind ``exc`` (Hydra wraps it), else None:
    e.g. MLflow 3 refusing a ``file:`` store, or a malformed tracking URI."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if type(exc).__module__.split(".")[0] in TRACKER_PACKAGES:
            return ConfigError(f"logger.{key}: {one_line(exc)}")
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def log_report(loggers: Sequence[Logger], metrics: Mapping[str, float], run_dir: Path, step: int) -> None:
    """The report's numeric metrics as ``report/<key>`` and ``run_dir/*.png`` as ``plots/<name>``, at ``step``
    (the last training step), to each TensorBoard, MLflow and wandb logger; each is closed afterwards."""
    scalars = {f"report/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    plots = sorted(run_dir.glob("*.png"))
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            _tensorboard(logger, scalars, plots, run_dir, step)
        elif isinstance(logger, MLFlowLogger):
            _mlflow(logger, scalars, plots, run_dir, step)
        elif isinstance(logger, WandbLogger):
            _wandb(logger, scalars, plots, step)


def _rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _tensorboard(logger: TensorBoardLogger, scalars: dict[str, float], plots: list[Path], run_dir: Path,
                 step: int) -> None:
    logger.log_metrics(scalars, step=step)
    writer = logger.experiment
    for path in plots:
        writer.add_image(f"plots/{path.stem}", _rgb(path), step, dataformats="HWC")
    report_md = run_dir / "report.md"
    if report_md.is_file():
        writer.add_text("report", report_md.read_text(), step)
    logger.finalize("success")  # flushes the event file


def _mlflow(logger: MLFlowLogger, scalars: dict[str, float], plots: list[Path], run_dir: Path, step: int) -> None:
    logger.log_metrics(scalars, step=step)
    client, run_id = logger.experiment, logger.run_id
    for path in plots:
        client.log_artifact(run_id, str(path), "plots")
    for name in ("report.json", "report.md"):
        if (run_dir / name).is_file():
            client.log_artifact(run_id, str(run_dir / name), "report")
    logger.finalize("success")  # the run's status: FINISHED


def _wandb(logger: WandbLogger, scalars: dict[str, float], plots: list[Path], step: int) -> None:
    import wandb

    images = {f"plots/{path.stem}": wandb.Image(str(path)) for path in plots}
    run = logger.experiment
    run.log({**scalars, **images, "trainer/global_step": step})
    run.finish()  # writes the run's summary; Lightning leaves the run open
