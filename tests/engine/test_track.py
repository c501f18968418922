"""fourm21-predict source=VIDEO track=...: a track_id on every detection of the JSON lines, tracks per class in the
summary, the annotated video; track=null as before; a bad tracker name or setting is a one-line ConfigError."""

import json

import pytest
import torch
from omegaconf import OmegaConf

from fourm21.engine.predict import frame_record, run_predict, tracker_from_config, update_trails
from fourm21.errors import ConfigError
from fourm21.inference.decode import DecodeSettings
from fourm21.inference.model import FramePrediction
from tests.conftest import REPO, model_config, run_cli_here
from tests.engine.test_predict_video import count_frames
from tests.inference.test_tracking import NUM_FRAMES, write_moving_shapes

# the 2-epoch model scores low: keep its weak detections and let them start and continue tracks
LOW = ["score_thr=0.05", "max_det=5", "tracker.track_activation_threshold=0.05",
       "tracker.high_conf_det_threshold=0.05", "tracker.minimum_consecutive_frames=1"]


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_track_bytetrack_gives_every_detection_a_track_id(tiny_run, tmp_path):
    work, run_dir, _ = tiny_run
    clip = write_moving_shapes(tmp_path / "shapes.mp4")
    out = tmp_path / "tracked"
    res = run_cli_here("fourm21-predict", [f"ckpt_path={run_dir / 'checkpoints/best.ckpt'}", f"source={clip}",
                                      "track=bytetrack", *LOW, "batch_size=4", f"hydra.run.dir={out}"], work)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = read_lines(out / "videos" / "shapes.jsonl")
    assert [r["frame"] for r in lines] == list(range(NUM_FRAMES))
    dets = [d for r in lines for d in r["detections"]]
    assert dets, "the tiny model tracked nothing: lower score_thr in this test"
    assert all(isinstance(d["track_id"], int) and d["track_id"] >= 0 for d in dets)
    for r in lines:
        assert len({d["track_id"] for d in r["detections"]}) == len(r["detections"])  # one detection per track
        assert all("segmentation" in d for d in r["detections"])  # masks stay on their detection
    assert "tracks (bytetrack)" in res.stdout
    assert count_frames(out / "videos" / "shapes.mp4") == NUM_FRAMES


def test_track_null_is_todays_output(tiny_run, tmp_path):
    _, run_dir, _ = tiny_run
    cfg = OmegaConf.load(REPO / "fourm21" / "configs" / "predict.yaml")
    cfg.pop("defaults")
    clip = write_moving_shapes(tmp_path / "shapes.mp4")
    out = tmp_path / "plain"
    result = run_predict(OmegaConf.merge(cfg, {
        "ckpt_path": str(run_dir / "checkpoints/best.ckpt"), "source": str(clip), "score_thr": 0.05, "max_det": 5,
        "device": "cpu", "save_overlays": False, "paths": {"run_dir": str(out)}}))  # track: null, the default
    dets = [d for r in read_lines(out / "videos" / "shapes.jsonl") for d in r["detections"]]
    assert dets and not any("track_id" in d for d in dets)
    assert "tracks" not in result["videos"][0]


def test_an_unknown_tracker_is_a_one_line_config_error(tiny_run, tmp_path):
    work, run_dir, _ = tiny_run
    res = run_cli_here("fourm21-predict", [f"ckpt_path={run_dir / 'checkpoints/best.ckpt'}", f"source={tmp_path}",
                                      "track=deepsort", f"hydra.run.dir={tmp_path / 'bad'}"], work)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == ["fourm21: ConfigError: track: unknown tracker 'deepsort'; "
                                               "one of bytetrack, botsort, ocsort, sort (or null for none)"]


def test_tracker_settings_come_from_the_config():
    cfg = OmegaConf.load(REPO / "fourm21" / "configs" / "predict.yaml")
    assert cfg.track is None and tracker_from_config(cfg) is None
    tracker = tracker_from_config(OmegaConf.merge(cfg, {"track": "bytetrack", "tracker": {"lost_track_buffer": 5}}))
    assert tracker.name == "bytetrack" and tracker.settings == {"lost_track_buffer": 5}
    for overrides, message in (({"track": "sort", "tracker": {"high_conf_det_threshold": 0.5}}, "sort has no such"),
                               ({"track": "ocsort", "tracker": {"typo": 1}}, "tracker.typo")):
        with pytest.raises(ConfigError, match=message):
            tracker_from_config(OmegaConf.merge(cfg, overrides))


def test_frame_records_and_trails_follow_track_ids():
    pred = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 40.0]]),
            "scores": torch.tensor([0.9, 0.5]), "labels": torch.tensor([0, 1]), "track_ids": torch.tensor([7, 3])}

    class Names:
        class_names, image_class_names, attribute_classes, label_names = ["a", "b"], [], {}, []
        meta = {"class_names": ["a", "b"]}
        settings = DecodeSettings.from_config(model_config(**{f"heads.{h}.enabled": False
                                                              for h in ("cls", "inst", "sem")}))

    record = frame_record(FramePrediction(0, 0.0, torch.zeros(40, 40, 3).numpy(), pred), Names())
    assert [(d["track_id"], d["category_name"]) for d in record["detections"]] == [(7, "a"), (3, "b")]
    assert list(record["detections"][0])[0] == "track_id"
    trails = update_trails({}, pred, 2)
    trails = update_trails(trails, {**pred, "boxes": pred["boxes"] + 2}, 2)
    trails = update_trails(trails, {**pred, "boxes": pred["boxes"][:1] + 4, "track_ids": pred["track_ids"][:1]}, 2)
    assert {k: list(v) for k, v in trails.items()} == {7: [(7.0, 7.0), (9.0, 9.0)]}  # 3 was lost: its trail ends
