"""Video and camera prediction: the CLI's annotated mp4 + JSON lines, the lazy stream API, and the errors."""

import glob
import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import fourm21
from fourm21.data.video import list_media
from fourm21.engine.predict import check_config
from fourm21.errors import ConfigError, DatasetError
from tests.conftest import REPO, run_cli_here

NUM_FRAMES, FPS = 12, 10


def write_clip(path: Path, shapes_root: Path, size: tuple[int, int] = (64, 64)) -> Path:
    """A short mp4 of the generated shapes val images, one per frame."""
    files = sorted((shapes_root / "images" / "val").glob("*.png"))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, size)
    for i in range(NUM_FRAMES):
        rgb = np.asarray(Image.open(files[i % len(files)]).convert("RGB").resize(size))
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def count_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def test_predict_on_a_folder_with_a_video_writes_mp4_and_json_lines(tiny_run, shapes_root, tmp_path):
    work, run_dir, _ = tiny_run
    src = tmp_path / "media"
    src.mkdir()
    write_clip(src / "clip.mp4", shapes_root, size=(80, 64))
    Image.open(next((shapes_root / "images" / "val").glob("*.png"))).save(src / "still.png")
    out = tmp_path / "pred"
    res = run_cli_here("fourm21-predict", [f"ckpt_path={run_dir / 'checkpoints/best.ckpt'}", f"source={src}",
                                      "score_thr=0.0", "max_det=5", "batch_size=5", f"hydra.run.dir={out}"], work)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "1 images" in res.stdout and f"clip.mp4: {NUM_FRAMES} frames" in res.stdout
    assert "frames/s" in res.stdout
    assert len(json.loads((out / "predictions.json").read_text())["images"]) == 1  # images as before
    assert count_frames(out / "videos" / "clip.mp4") == NUM_FRAMES
    lines = [json.loads(line) for line in (out / "videos" / "clip.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in lines] == list(range(NUM_FRAMES))
    assert [r["time_s"] for r in lines] == pytest.approx([i / FPS for i in range(NUM_FRAMES)], abs=1e-3)
    assert sum(len(r["detections"]) for r in lines) > 0
    for r in lines:
        assert (r["width"], r["height"]) == (80, 64)
        assert r["classification"]["class_name"] in ("forest", "desert", "ocean", "dusk")
        assert len(r["detections"]) <= 5
        for d in r["detections"]:
            x0, y0, x1, y1 = d["bbox"]
            assert 0 <= x0 <= x1 <= 80 and 0 <= y0 <= y1 <= 64
            assert d["category_name"] in ("circle", "square", "triangle") and 0 <= d["score"] <= 1
            assert d["segmentation"]["size"] == [64, 80]


def test_predict_video_streams_frame_by_frame(tiny_run, shapes_root, tmp_path):
    _, run_dir, _ = tiny_run
    model = fourm21.load(run_dir / "checkpoints/best.ckpt")
    clip = write_clip(tmp_path / "clip.mp4", shapes_root)
    stream = model.predict_video(clip)
    assert isinstance(stream, Iterator)
    assert (stream.fps, stream.frame_count, stream.width, stream.height) == (FPS, NUM_FRAMES, 64, 64)
    first = list(itertools.islice(stream, 3))
    assert stream.reader.frames_read == 3  # decoded only what was consumed
    assert [f.index for f in first] == [0, 1, 2]
    assert first[1].time_s == pytest.approx(1 / FPS, abs=1e-3)
    assert first[0].image.shape == (64, 64, 3) and first[0].pred["masks"].shape[1:] == (64, 64)
    # the same code path as predict on the frame's pixels
    torch.testing.assert_close(first[0].pred["class_probs"], model.predict(first[0].image)[0]["class_probs"])
    stream.close()
    with model.predict_video(clip, batch_size=5, max_frames=7) as batched:
        assert [f.index for f in batched] == list(range(7))


def test_video_errors_name_the_source(tiny_run, tmp_path):
    work, run_dir, _ = tiny_run
    model = fourm21.load(run_dir / "checkpoints/best.ckpt")
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video")
    with pytest.raises(DatasetError, match="video not found: .*missing.mp4"):
        model.predict_video(tmp_path / "missing.mp4")
    with pytest.raises(DatasetError, match="cannot read video .*junk.mp4"):
        model.predict_video(junk)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images or videos"):
        list_media(tmp_path / "empty")
    cfg = OmegaConf.load(REPO / "fourm21" / "configs" / "predict.yaml")
    for key, value, message in (("video_fourcc", "h264x", "four characters"), ("max_frames", 0, "max_frames"),
                                ("batch_size", 0, "batch_size")):
        with pytest.raises(ConfigError, match=message):
            check_config(OmegaConf.merge(cfg, {key: value}))
    if glob.glob("/dev/video*"):
        pytest.skip("this machine has a camera")
    with pytest.raises(DatasetError, match="no camera at index 0"):
        model.predict_video(0)
    ckpt = f"ckpt_path={run_dir / 'checkpoints/best.ckpt'}"
    res = run_cli_here("fourm21-predict", [ckpt, "source=0", f"hydra.run.dir={tmp_path / 'cam'}"], work)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == ["fourm21: DatasetError: no camera at index 0 (OpenCV cannot open it)"]
