"""Share a trained model: a self-contained directory (``save_pretrained``), the Hugging Face Hub (``push_to_hub``,
``fourm21.load("hf://owner/name")``).

The directory is the safetensors export of ``fourm21-export`` (``fourm21.export.formats.export_safetensors``:
model.safetensors, config.yaml, classes.json) plus a model card, README.md: heads, input size, classes, how to
load it and, when the model came from a training run with a ``report.json``, the run's metrics (the report is
copied beside it). ``fourm21.load(directory)`` reads it like any export. The Hub needs ``huggingface_hub`` and a
network; without one every call here fails with one line naming the repository and why.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fourm21.errors import CheckpointError, ConfigError
from fourm21.export.formats import export_safetensors
from fourm21.inference.checkpoints import architecture
from fourm21.inference.loading import load
from fourm21.inference.model import Fourm21Model

HF_PREFIX = "hf://"
REPORT = "report.json"
# report.json keys of these stages describe the run, not the model: left out of the card (kept in report.json)
_NOT_METRICS = ("data", "time", "train")


def is_hub_uri(path: Any) -> bool:
    """``path`` names a model on the Hub (``hf://owner/name[@revision]``), not a local file."""
    return isinstance(path, str) and path.startswith(HF_PREFIX)


def parse_hub_uri(uri: str) -> tuple[str, str | None]:
    """``hf://owner/name[@revision]`` -> (repo id, revision or None); a ConfigError names a malformed one."""
    repo_id, at, revision = uri.removeprefix(HF_PREFIX).strip("/").partition("@")
    _check_repo_id(repo_id, uri)
    if at and not revision:
        raise ConfigError(f"{uri}: empty revision after '@' (write hf://owner/name or hf://owner/name@revision)")
    return repo_id, revision or None


def _check_repo_id(repo_id: str, shown: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ConfigError(f"{shown}: not a Hugging Face repository id ('owner/name'): {e}") from None


def find_report(source: str | Path) -> Path | None:
    """The ``report.json`` of the run a checkpoint or export directory came from: beside it, or one folder up
    (``<run>/checkpoints/best.ckpt`` -> ``<run>/report.json``); None when there is none."""
    source = Path(source)
    here = source if source.is_dir() else source.parent
    return next((p for p in (here / REPORT, here.parent / REPORT) if p.is_file()), None)


def _read_report(report: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(report, Mapping):
        return dict(report)
    try:
        data = json.loads(Path(report).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"report {report}: cannot be read as JSON ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"report {report}: expected a JSON object of 'stage/task/metric' keys")
    return data


def card_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """The model's metrics in a flat ``stage/task/metric`` report: numbers of the evaluation stages
    (``val/...``, ``test/...``), not losses, not the run's bookkeeping (data, time, train)."""
    out = {}
    for key, value in report.items():
        parts = key.split("/")
        if parts[0] in _NOT_METRICS or parts[-1].startswith("loss"):
            continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def _metrics_table(metrics: Mapping[str, float]) -> list[str]:
    rows = ["| stage | task | metric | value |", "|---|---|---|---|"]
    for key, value in sorted(metrics.items()):
        parts = key.split("/")
        stage, task, metric = (parts[0], "", parts[1]) if len(parts) == 2 else (parts[0], parts[1], "/".join(parts[2:]))
        rows.append(f"| {stage} | {task} | {metric} | {value:.4f} |" if math.isfinite(value)
                    else f"| {stage} | {task} | {metric} | {value} |")
    return rows


def model_card(model: Fourm21Model, report: Mapping[str, Any] | None = None, source: str | None = None,
               repo_id: str | None = None) -> str:
    """README.md for a saved model: Hub metadata, what the network is, its classes and its metrics."""
    tasks = sorted(model.settings.tasks.values(), key=lambda t: t.pipeline_rank)  # the first names the pipeline
    pipeline = next((t.pipeline_tag for t in tasks if t.pipeline_tag), None)
    tags = ["fourm21", *dict.fromkeys(t.pipeline_tag for t in tasks if t.pipeline_tag)]
    front = ["---", "library_name: fourm21", *([f"pipeline_tag: {pipeline}"] if pipeline else []), "tags:",
             *(f"- {t}" for t in tags), "---", ""]
    where = f"hf://{repo_id}" if repo_id else "path/to/this/directory"
    lines = [f"# {repo_id.split('/')[-1] if repo_id else 'fourm21 model'}", "",
             "A fourm21 multitask vision network: one backbone, one forward pass, every head below.",
             "", "```python", "import fourm21", "", f'model = fourm21.load("{where}")',
             'preds = model.predict(["photo.jpg"])   # one dict of tensors per image, in the image\'s pixels',
             "```", "", "## Model", "",
             f"- **architecture**: {architecture(model.model_config)}",
             f"- **heads**: {', '.join(f'{n} ({k})' for n, k in model.settings.heads.items())}",
             f"- **input size**: {model.img_size} x {model.img_size} (letterboxed)"]
    if model.meta.get("data"):
        lines.append(f"- **trained on**: {model.meta['data']}")
    if source:
        lines.append(f"- **saved from**: `{source}`")
    lines.append("- **files**: model.safetensors (weights, no pickle), config.yaml (model config and decode "
                 "settings), classes.json" + (", report.json (the run's full report)" if report else ""))
    lines += ["", "## Classes", ""]
    groups = [("detection / segmentation classes", model.class_names),
              ("image classes", model.image_class_names), ("labels (multi-label)", model.label_names),
              *((f"attribute '{g}'", names) for g, names in model.attribute_classes.items())]
    for title, names in groups:
        if names:
            lines.append(f"- **{title}** ({len(names)}): " + ", ".join(f"{i}: {n}" for i, n in enumerate(names)))
    metrics = card_metrics(report) if report else {}
    lines += ["", "## Metrics", ""]
    if metrics:
        lines += ["The evaluation in report.json (saved beside this card; by default the training run's, written after "
                  "training).", "",
                  *_metrics_table(metrics)]
    else:
        lines.append("No report was saved with this model (evaluate it with `fourm21-eval ckpt_path=...`).")
    return "\n".join(front + lines) + "\n"


def _as_model(model: Fourm21Model | str | Path) -> tuple[Fourm21Model, Path | None]:
    if isinstance(model, Fourm21Model):
        return model, None
    if is_hub_uri(model):
        raise ConfigError(f"{model}: save_pretrained takes a model, a .ckpt or a local directory, not a Hub URI "
                          f"(load it first: fourm21.load('{model}'))")
    return load(model), Path(model)


def save_pretrained(model: Fourm21Model | str | Path, directory: str | Path,
                    report: str | Path | Mapping[str, Any] | None = None, repo_id: str | None = None) -> Path:
    """Write ``model`` (a loaded model, a ``.ckpt`` or an export directory) into ``directory`` so that
    ``fourm21.load(directory)`` rebuilds it: the safetensors export, and README.md, the model card.

    ``report`` (a report.json path or its dict) gives the card its metrics; by default the report of the run a
    checkpoint path came from (``find_report``). Returns ``directory``."""
    model, source = _as_model(model)
    if model.net is None:
        raise CheckpointError(f"{source or 'this model'} is an export without PyTorch weights (ONNX, .pt2, "
                              f"OpenVINO); save_pretrained it from its .ckpt or a safetensors directory")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"save_pretrained: {directory} exists and is not a directory")
    if report is None and source is not None:
        report = find_report(source)
    data = _read_report(report) if report is not None else None
    export_safetensors(model, directory)
    if data is not None:
        (directory / REPORT).write_text(json.dumps(data, indent=2) + "\n")
    shown = f"{source.parent.name}/{source.name}" if source is not None else None
    (directory / "README.md").write_text(model_card(model, data, shown, repo_id))
    return directory


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _root_cause(exc: BaseException) -> BaseException:
    seen = {id(exc)}
    while (exc.__cause__ or exc.__context__) is not None and id(exc.__cause__ or exc.__context__) not in seen:
        exc = exc.__cause__ or exc.__context__
        seen.add(id(exc))
    return exc


def _hub_error(action: str, repo_id: str, exc: Exception) -> CheckpointError:
    """One line: what failed (``action`` on ``repo_id``), why (offline, unreachable, absent, refused), the fix."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        LocalTokenNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if constants.HF_HUB_OFFLINE:
        why = "offline: HF_HUB_OFFLINE is set"
        why += f" and it is not in the local cache {constants.HF_HUB_CACHE}" if action == "load" else ""
        return CheckpointError(f"cannot {action} hf://{repo_id}: {why}; unset HF_HUB_OFFLINE when online")
    if isinstance(exc, LocalTokenNotFoundError):
        return CheckpointError(f"cannot {action} hf://{repo_id}: not logged in to the Hub (`hf auth login`, or token=)")
    if isinstance(exc, RevisionNotFoundError):
        return CheckpointError(f"cannot {action} hf://{repo_id}: no such revision on {_endpoint()}")
    if isinstance(exc, RepositoryNotFoundError):
        return CheckpointError(f"cannot {action} hf://{repo_id}: no such model repository on {_endpoint()} (or it "
                               f"is private or gated: log in with `hf auth login` or pass token=)")
    if isinstance(exc, HfHubHTTPError) and getattr(exc, "response", None) is not None:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return CheckpointError(f"cannot {action} hf://{repo_id}: the Hub refused ({first})")
    cause = _root_cause(exc)
    detail = " ".join(str(cause).split()) or type(cause).__name__
    cached = f" and it is not in the local cache {constants.HF_HUB_CACHE}" if isinstance(exc, LocalEntryNotFoundError) \
        and action == "load" else ""
    return CheckpointError(f"cannot {action} hf://{repo_id}: the Hugging Face Hub ({_endpoint()}) is unreachable "
                           f"({type(cause).__name__}: {detail[:160]}){cached}; are you offline?")


def download(uri: str, token: str | bool | None = None) -> Path:
    """The local snapshot of ``hf://owner/name[@revision]`` (downloaded, or from the Hugging Face cache)."""
    repo_id, revision = parse_hub_uri(uri)
    from huggingface_hub import snapshot_download

    try:
        local = Path(snapshot_download(repo_id, revision=revision, token=token, library_name="fourm21"))
    except Exception as e:  # noqa: BLE001 - the Hub client raises its own and its HTTP library's errors
        raise _hub_error("load", repo_id, e) from None
    if not (local / "config.yaml").is_file():
        raise CheckpointError(f"{uri}: not a fourm21 model repository (no config.yaml; save one with "
                              f"fourm21.push_to_hub)")
    return local


def push_to_hub(model: Fourm21Model | str | Path, repo_id: str, private: bool | None = None,
                token: str | None = None, report: str | Path | Mapping[str, Any] | None = None,
                commit_message: str = "Upload fourm21 model") -> str:
    """``save_pretrained(model)`` into the Hub model repository ``repo_id`` (created if absent); returns its URL.
    ``fourm21.load(f"hf://{repo_id}")`` loads it back anywhere."""
    _check_repo_id(repo_id, repo_id)
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:  # before loading anything
        raise _hub_error("push to", repo_id, ConnectionError("offline"))
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    except Exception as e:  # noqa: BLE001 - see download
        raise _hub_error("push to", repo_id, e) from None
    with tempfile.TemporaryDirectory(prefix="fourm21-push-") as tmp:
        folder = save_pretrained(model, Path(tmp) / "model", report, repo_id)
        try:
            api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message,
                              repo_type="model")
        except Exception as e:  # noqa: BLE001 - see download
            raise _hub_error("push to", repo_id, e) from None
    return str(url)
