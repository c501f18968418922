"""The COCO writer: the output folder's rules, how images arrive, the held-out split."""

from __future__ import annotations

import json

import pytest

from fourm21.data.formats import convert
from fourm21.data.formats.to_coco import STAMP
from fourm21.errors import ConfigError, DatasetError
from tests.data.formats.helpers import read_back
from tests.data.formats.test_yolo import coco128_like


def test_out_folder_rules(tmp_path):
    src = coco128_like(tmp_path)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not empty and not a fourm21-convert output"):
        convert("yolo", src, foreign)
    out = tmp_path / "out"
    convert("yolo", src, out)
    stamp = json.loads((out / STAMP).read_text())
    assert stamp["format"] == "yolo" and stamp["splits"]["train"]["images"] == 3
    with pytest.raises(DatasetError, match="overwrite=true"):
        convert("yolo", src, out)
    (out / STAMP).write_text('{"complete": false}')  # a conversion cut short is replaced without asking
    convert("yolo", src, out)
    assert json.loads((out / STAMP).read_text())["complete"] is True
    (src / "labels" / "train2017" / "000001.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    convert("yolo", src, out, overwrite=True, images="hardlink")
    assert len(read_back(out).coco.anns) == 3
    assert (out / "train2017" / "000000.jpg").stat().st_nlink == 3  # the source, its train and val links


def test_bad_options_name_the_key(tmp_path):
    src = coco128_like(tmp_path)
    for kwargs, key in [({"images": "move"}, "images"), ({"val_fraction": 1.0}, "val_fraction"),
                        ({"on_bad_image": "maybe"}, "on_bad_image")]:
        with pytest.raises(ConfigError, match=key):
            convert("yolo", src, tmp_path / "out", **kwargs)
    with pytest.raises(ConfigError, match="format: 'coco' is not one of"):
        convert("coco", src, tmp_path / "out")
    with pytest.raises(DatasetError, match="src: .*nowhere not found"):
        convert("yolo", tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(DatasetError, match="is inside src"):
        convert("yolo", src, src / "coco")
