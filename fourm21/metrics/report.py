"""report.json (flat ``stage/task/metric``) and report.md, written after every training and evaluation."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def write_report(run_dir: str | Path, metrics: dict[str, Any], title: str = "fourm21 report",
                 notes: dict[str, Any] | None = None) -> Path:
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
        stage, task, metric = (parts + ["", "", ""])[:3] if len(parts) >= 3 else (parts[0], "", parts[-1])
        if len(parts) == 2:
            stage, task, metric = parts[0], "", parts[1]
        shown = f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else str(value)
        lines.append(f"| {stage} | {task} | {metric} | {shown} |")
    (run_dir / "report.md").write_text("\n".join(lines) + "\n")
    return path
