"""report.json (flat ``stage/task/metric``) and report.md, written after every training and evaluation."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def write_report(run_dir: str | Path, metrics: dict[str, Any], title: str = "fourm21 report",
                 notes: dict[str, Any] | None = None, sections: dict[str, str] | None = None,
                 details: dict[str, Any] | None = None) -> Path:
    """Write ``report.json`` and ``report.md`` into ``run_dir``; returns the JSON path.

    ``details`` (per-class tables, confusion matrices, ...) go into report.json beside the metrics but not
    into report.md's metric table: the markdown shows them through ``sections``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    flat = {k: (float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v)
            for k, v in sorted(metrics.items())}
    path = run_dir / "report.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(dict(sorted({**flat, **(details or {})}.items())), indent=2) + "\n")
    tmp.replace(path)
    lines = [f"# {title}", ""]
    for key, value in (notes or {}).items():
        lines.append(f"- **{key}**: {value}")
    if notes:
        lines.append("")
    lines += ["| stage | task | metric | value |", "|---|---|---|---|"]
    for key, value in flat.items():
        parts = key.split("/")
        stage, task, metric = (parts[0], "", parts[1]) if len(parts) == 2 else (parts[0], parts[1], "/".join(parts[2:]))
        shown = f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else str(value)
        lines.append(f"| {stage} | {task} | {metric} | {shown} |")
    for heading, body in (sections or {}).items():
        lines += ["", f"## {heading}", "", body]
    (run_dir / "report.md").write_text("\n".join(lines) + "\n")
    return path


def per_class_markdown(table: dict[str, list[float]], class_names: list[str]) -> str:
    """A markdown table: one row per class with precision, recall, F1 and support."""
    rows = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for i in range(len(table["f1"])):
        name = class_names[i] if i < len(class_names) else str(i)
        rows.append(f"| {name} | {table['precision'][i]:.4f} | {table['recall'][i]:.4f} | {table['f1'][i]:.4f} "
                    f"| {int(table['support'][i])} |")
    return "\n".join(rows)


def per_class_ap_markdown(table: dict[str, dict[str, float]]) -> str:
    """A markdown table: one row per class with COCO AP (IoU 0.5:0.95), AP50, AP75 and its instances."""
    rows = ["| class | AP | AP50 | AP75 | instances |", "|---|---|---|---|---|"]
    for name, row in table.items():
        rows.append(f"| {name} | {row['ap']:.4f} | {row['ap50']:.4f} | {row['ap75']:.4f} | {int(row['instances'])} |")
    return "\n".join(rows)


def confusion_markdown(confusion: dict[str, Any]) -> str:
    """A markdown table of a detection confusion matrix (``DetectionErrors.to_json``): rows the true class,
    columns the predicted one; the background row counts false detections, its column missed objects."""
    names = confusion["classes"]
    rows = [f"IoU >= {confusion['iou_thr']:g}, score >= {confusion['score_thr']:g}; rows: true class, "
            "columns: predicted class.", "", "| true \\ predicted | " + " | ".join(names) + " |",
            "|---" * (len(names) + 1) + "|"]
    for name, counts in zip(names, confusion["matrix"]):
        rows.append(f"| {name} | " + " | ".join(str(int(c)) for c in counts) + " |")
    return "\n".join(rows)
