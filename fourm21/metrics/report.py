"""report.json (flat ``stage/task/metric``) and report.md, written after every training and evaluation."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def write_report(run_dir: str | Path, metrics: dict[str, Any], title: str = "fourm21 report",
                 notes: dict[str, Any] | None = None, sections: dict[str, str] | None = None) -> Path:
    """Write ``report.json`` and ``report.md`` into ``run_dir``; returns the JSON path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    flat = {k: (float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v)
            for k, v in sorted(metrics.items())}
    path = run_dir / "report.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(flat, indent=2) + "\n")
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
