"""fourm21-convert as a user runs it: the summary on success, one line and exit 2 on a bad file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import TINY
from tests.data.formats.helpers import run_convert
from tests.data.formats.test_labelme import labelme_like
from tests.data.formats.test_voc import voc_like
from tests.data.formats.test_yolo import coco128_like


def test_convert_prints_the_summary_and_the_training_command(tmp_path):
    res = run_convert(["format=yolo", f"src={coco128_like(tmp_path, seg=True)}", f"out={tmp_path / 'out'}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"fourm21-train experiment=coco data.root={tmp_path / 'out'} data.num_classes=3" in res.stdout
    report = json.loads((tmp_path / "run" / "convert_report.json").read_text())
    assert report["splits"]["train"] == {"images": 3, "annotations": 2, "masks": 2, "semantic_dir": None,
                                         "repairs": {}}


def _break_yolo_fields(tmp_path):
    src = coco128_like(tmp_path)
    (src / "labels" / "train2017" / "000001.txt").write_text("0 0.5 0.5\n")
    return "yolo", src, "000001.txt:1: 3 fields"


def _break_yolo_class(tmp_path):
    src = coco128_like(tmp_path)
    (src / "labels" / "train2017" / "000001.txt").write_text("7 0.5 0.5 0.1 0.1\n")
    return "yolo", src, "000001.txt:1: class id 7 out of range"


def _break_voc_xml(tmp_path):
    src = voc_like(tmp_path)
    (src / "VOC2012" / "Annotations" / "a.xml").write_text("<annotation><size>")
    return "voc", src, "a.xml: not valid XML"


def _break_voc_image(tmp_path):
    src = voc_like(tmp_path)
    (src / "VOC2012" / "JPEGImages" / "c.jpg").unlink()
    return "voc", src, "c.jpg: image not found"


def _break_labelme_json(tmp_path):
    src = labelme_like(tmp_path / "lm")
    (src / "val" / "c.json").write_text("{not json")
    return "labelme", src, "c.json: not valid JSON"


@pytest.mark.parametrize("breaker", [_break_yolo_fields, _break_yolo_class, _break_voc_xml, _break_voc_image,
                                     _break_labelme_json])
def test_bad_files_give_one_line_naming_the_file(tmp_path, breaker):
    fmt, src, message = breaker(tmp_path)
    res = run_convert([f"format={fmt}", f"src={src}", f"out={tmp_path / 'out'}"], tmp_path, here=True)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr and message in res.stderr
    assert len([ln for ln in res.stderr.splitlines() if ln.startswith("fourm21:")]) == 1


def test_missing_and_bad_keys_are_config_errors(tmp_path):
    res = run_convert(["format=yolo", f"out={tmp_path / 'out'}"], tmp_path, here=True)
    assert res.returncode == 2 and "src: required" in res.stderr and "Traceback" not in res.stderr
    res = run_convert(["format=voc", f"src={tmp_path}", f"out={tmp_path / 'out'}", "names=cat"], tmp_path, here=True)
    assert res.returncode == 2 and "names: a list of class names" in res.stderr and "Traceback" not in res.stderr


def test_fourm21_train_reads_the_conversion_as_coco(tmp_path):
    out = tmp_path / "out"
    assert run_convert(["format=yolo", f"src={coco128_like(tmp_path, seg=True)}", f"out={out}"],
                       tmp_path).returncode == 0
    tiny = [a for a in TINY if not a.startswith("data.")]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    res = subprocess.run([sys.executable, "-m", "fourm21.engine.train", "experiment=coco", f"data.root={out}",
                          "data.num_classes=3", "data.img_size=64", "data.datamodule.batch_size=3",
                          "data.datamodule.num_workers=0", "trainer.fast_dev_run=true", *tiny,
                          f"hydra.run.dir={tmp_path / 'train'}"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "train" / "report.json").is_file()
