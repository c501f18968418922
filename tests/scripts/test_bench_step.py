"""scripts/bench_step.py times the config's training step under every precision/optimiser variant, as JSON lines."""

import json
import os
import subprocess
import sys

from tests.conftest import REPO, TINY

SCRIPT = REPO / "scripts" / "bench_step.py"
VARIANTS = {"fp32", "fp32_fused", "bf16_all", "bf16", "bf16_fused"}


def test_every_variant_is_timed_on_the_config_step(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    args = ["--iters", "1", "--warmup", "0", "--batches", "1", "--threads", "1",
            *[a for a in TINY if not a.startswith("trainer.")], f"paths.data_dir={tmp_path}"]
    res = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [json.loads(line) for line in res.stdout.splitlines()]  # every stdout line is JSON
    assert lines[0]["batch"] == 8 and lines[0]["threads"] == 1 and "cpu" in lines[0]["machine"]
    timed = {r["variant"]: r for r in lines if "variant" in r}
    assert set(timed) == VARIANTS
    assert all(r["ms_per_step"] > 0 and r["img_s"] > 0 for r in timed.values())
    ratios = lines[-1]["summary"]
    assert ratios["fp32_vs_fp32"] == 1.0 and set(ratios) == {f"{v}_vs_fp32" for v in VARIANTS}
