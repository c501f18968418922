"""fourm21.save_pretrained -> fourm21.load round trip (same predictions, a model card with the classes and the run's
metrics), and the Hub calls failing in one line when offline or unreachable. No test touches the network: the Hub
tests point huggingface_hub at a closed local port (or set HF_HUB_OFFLINE=1) in a fresh interpreter, since
huggingface_hub reads both variables once, at import."""

import json
import os
import subprocess
import sys

import pytest
import torch

import fourm21
from fourm21.errors import ConfigError
from fourm21.export.formats import same_detections
from fourm21.hub import card_metrics


def _predict(model, images):
    model.set_thresholds(score_thr=0.01)  # a 2-epoch model scores low: keep enough detections to compare
    return model.predict(images)


def test_save_pretrained_round_trip_with_model_card(tiny_run, tmp_path):
    work_dir, run_dir, _ = tiny_run
    ckpt = run_dir / "checkpoints/best.ckpt"
    images = sorted((work_dir / "data/shapes/images/val").glob("*.png"))[:4]
    assert images
    original = fourm21.load(ckpt)
    before = _predict(original, images)
    assert all(len(p["boxes"]) for p in before), [len(p["boxes"]) for p in before]

    out = fourm21.save_pretrained(ckpt, tmp_path / "shared")
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "config.yaml", "classes.json", "README.md",
                                               "report.json"}
    again = fourm21.load(out)
    assert again.class_names == original.class_names and again.image_class_names == original.image_class_names
    assert again.img_size == original.img_size
    after = _predict(again, images)
    for a, b in zip(before, after):
        assert same_detections((a["boxes"], a["scores"], a["labels"]), (b["boxes"], b["scores"], b["labels"]))
        torch.testing.assert_close(a["class_probs"], b["class_probs"])
        assert torch.equal(a["semantic"], b["semantic"])

    report = json.loads((run_dir / "report.json").read_text())
    assert json.loads((out / "report.json").read_text()) == report
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: fourm21\n")
    for name in original.class_names + original.image_class_names:
        assert name in card
    metrics = card_metrics(report)
    assert "val/det/map50" in metrics and "val/cls/acc" in metrics and not any("loss" in k for k in metrics)
    for key, value in metrics.items():
        stage, task, metric = key.split("/", 2) if key.count("/") >= 2 else (*key.split("/"), "")
        row = f"| {stage} | {task} | {metric} |" if metric else f"| {stage} |  | {task} |"
        assert f"{row} {value:.4f} |" in card, key


def test_save_pretrained_of_a_loaded_model_takes_an_explicit_report(tiny_run, tmp_path):
    _, run_dir, _ = tiny_run
    model = fourm21.load(run_dir / "checkpoints/best.ckpt")
    plain = fourm21.save_pretrained(model, tmp_path / "plain")  # no path to find a report from
    assert not (plain / "report.json").exists() and "No report was saved" in (plain / "README.md").read_text()
    card = (fourm21.save_pretrained(model, tmp_path / "with", report={"val/cls/acc": 0.5, "train/loss": 1.0})
            / "README.md").read_text()
    assert "| val | cls | acc | 0.5000 |" in card and "| train |" not in card
    again = fourm21.save_pretrained(plain, tmp_path / "copy")  # a saved directory saves again
    assert fourm21.load(again).class_names == model.class_names


@pytest.mark.parametrize("uri", ["hf://bad..name", "hf://owner/name@", "hf://a/b/c"])
def test_malformed_hub_uris_fail_before_any_request(uri):
    with pytest.raises(ConfigError, match="hf://"):
        fourm21.load(uri)


_HUB_CALLS = """
import json, sys, fourm21
from fourm21.errors import one_line
out = []
for call in (lambda: fourm21.load("hf://owner/fourm21-tiny"),
             lambda: fourm21.push_to_hub(sys.argv[1], "owner/fourm21-tiny", token="hf_not_a_token")):
    try:
        call()
        out.append("no error")
    except Exception as e:
        out.append(one_line(e))
print(json.dumps(out))
"""


def test_hub_calls_fail_in_one_line_when_offline_or_unreachable(tmp_path):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    base["HF_ENDPOINT"] = "http://127.0.0.1:9"  # a closed port: every request is refused at once
    runs = {}
    for mode in ("unreachable", "offline"):  # two fresh interpreters, side by side
        env = dict(base, HF_HOME=str(tmp_path / mode), **({"HF_HUB_OFFLINE": "1"} if mode == "offline" else {}))
        runs[mode] = subprocess.Popen([sys.executable, "-c", _HUB_CALLS, str(tmp_path / "never-read.ckpt")], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for mode, proc in runs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        load_error, push_error = json.loads(out.strip().splitlines()[-1])
        why = "offline: HF_HUB_OFFLINE is set" if mode == "offline" else "(http://127.0.0.1:9) is unreachable"
        assert load_error.startswith("CheckpointError: cannot load hf://owner/fourm21-tiny: "), load_error
        assert push_error.startswith("CheckpointError: cannot push to hf://owner/fourm21-tiny: "), push_error
        assert why in load_error and why in push_error, (mode, load_error, push_error)
