"""Tracking: identities persist per object (moving, crossing, briefly gone) and differ between objects; masks,
keypoints and image-level predictions stay attached; ``predict_video(..., tracker=...)`` on a generated clip."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fourm21.errors import ConfigError
from fourm21.inference.model import Fourm21Model
from fourm21.inference.tracking import TRACKER_NAMES, Tracker

H, W, NUM_FRAMES = 96, 160, 20
GONE = range(8, 12)  # frames in which object 2 is not seen


def object_boxes(f: int) -> dict[int, list[float]]:
    """Known boxes of frame ``f``: 0 moves right, 1 moves left and crosses 0 (offset by a few pixels), 2 drifts
    down and is absent in ``GONE``."""
    boxes = {0: [8 + 5 * f, 30, 38 + 5 * f, 60], 1: [122 - 5 * f, 36, 152 - 5 * f, 66]}
    if f not in GONE:
        boxes[2] = [60, 2 + f, 80, 22 + f]
    return boxes


def frame_pred(f: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Hand-made detections of frame ``f`` in a shuffled order (the order carries no identity): box-shaped
    masks, the object's number as its label, and image-level entries a tracker must leave alone."""
    items = list(object_boxes(f).items())
    items = [items[i] for i in rng.permutation(len(items))]
    boxes = torch.tensor([b for _, b in items], dtype=torch.float32)
    masks = torch.zeros(len(items), H, W, dtype=torch.bool)
    for k, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
        masks[k, y0:y1, x0:x1] = True
    keypoints = torch.stack([torch.stack([boxes[:, 0], boxes[:, 1], torch.ones(len(items))], -1),
                             torch.stack([boxes[:, 2], boxes[:, 3], torch.ones(len(items))], -1)], 1)  # 2 corners
    return {"boxes": boxes, "scores": torch.tensor([0.9 - 0.05 * i for i in range(len(items))]),  # sorted, as decoded
            "labels": torch.tensor([k for k, _ in items]), "masks": masks, "keypoints": keypoints,
            "class_probs": torch.tensor([0.25, 0.75]), "class_label": torch.tensor(1), "semantic": torch.zeros(H, W)}


def ids_per_object(frames: list[dict[str, torch.Tensor]]) -> dict[int, list[tuple[int, int]]]:
    """{object (label): [(frame, track id), ...]} of the tracked detections."""
    seen: dict[int, list[tuple[int, int]]] = {}
    for f, p in enumerate(frames):
        for label, tid in zip(p["labels"].tolist(), p["track_ids"].tolist()):
            seen.setdefault(label, []).append((f, tid))
    return seen


@pytest.mark.parametrize("name", TRACKER_NAMES)
def test_ids_persist_through_a_crossing_and_a_gap_and_differ_between_objects(name):
    rng = np.random.default_rng(0)
    tracker = Tracker(name)
    frames = [tracker.update(frame_pred(f, rng), np.full((H, W, 3), 128, np.uint8)) for f in range(NUM_FRAMES)]
    seen = ids_per_object(frames)
    assert set(seen) == {0, 1, 2}
    ids = {obj: {t for _, t in fs} for obj, fs in seen.items()}
    assert all(len(v) == 1 for v in ids.values()), f"{name}: an object changed id: {ids}"
    assert len({v.pop() for v in ids.values()}) == 3, f"{name}: two objects share an id"
    for obj in (0, 1):  # reported on all frames once confirmed, crossing included
        assert len(seen[obj]) >= NUM_FRAMES - 3
    assert max(f for f, _ in seen[2]) == NUM_FRAMES - 1  # object 2 came back under its old id
    assert not any(f in GONE for f, _ in seen[2])
    for f, p in enumerate(frames):
        assert p["track_ids"].dtype == torch.int64
        assert p["class_label"] == 1 and p["semantic"].shape == (H, W)  # image-level entries untouched
        assert len(p["boxes"]) == len(p["scores"]) == len(p["masks"]) == len(p["track_ids"])
        for label, box, mask, kpts in zip(p["labels"].tolist(), p["boxes"], p["masks"], p["keypoints"]):
            assert box.tolist() == object_boxes(f)[label]  # box, label, mask and keypoints moved together
            assert kpts[:, :2].flatten().tolist() == box.tolist()
            ys, xs = mask.nonzero(as_tuple=True)
            assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == box.int().tolist()
        assert (p["scores"][:-1] >= p["scores"][1:]).all()  # the decoder's order (by score) is kept


def test_new_tracks_wait_for_confirmation_and_start_restarts_ids():
    rng = np.random.default_rng(1)
    tracker = Tracker("bytetrack", minimum_consecutive_frames=2, lost_track_buffer=10)
    first = tracker.update(frame_pred(0, rng))
    assert len(first["boxes"]) == 0 and first["track_ids"].shape == (0,)  # not confirmed yet: left out
    assert sorted(tracker.update(frame_pred(1, rng))["track_ids"].tolist()) == [0, 1, 2]
    tracker.start(frame_rate=25.0)
    tracker.update(frame_pred(0, rng))
    assert sorted(tracker.update(frame_pred(1, rng))["track_ids"].tolist()) == [0, 1, 2]


def test_frames_without_detections_pass_through():
    tracker = Tracker("bytetrack")
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long),
             "masks": torch.zeros(0, H, W, dtype=torch.bool)}
    out = tracker.update(empty)
    assert out["boxes"].shape == (0, 4) and out["masks"].shape == (0, H, W) and len(out["track_ids"]) == 0
    classification_only = {"class_probs": torch.tensor([0.5, 0.5]), "class_label": torch.tensor(0)}
    assert tracker.update(classification_only).keys() == classification_only.keys()


def test_bad_names_and_settings_are_config_errors():
    with pytest.raises(ConfigError, match=r"track: unknown tracker 'deepsort'; one of bytetrack, botsort"):
        Tracker("deepsort")
    with pytest.raises(ConfigError, match=r"tracker.track_activation_threshold: ocsort has no such setting"):
        Tracker("ocsort", track_activation_threshold=0.5)
    with pytest.raises(ConfigError, match=r"tracker: bytetrack rejects .*lost_track_buffer"):
        Tracker("bytetrack", lost_track_buffer=-1)
    assert Tracker("sort", minimum_iou_threshold=None).settings == {}  # None = the library's default


COLOURS = {0: (230, 30, 30), 1: (30, 200, 30), 2: (40, 40, 230)}  # RGB of each object in the clip


def write_moving_shapes(path: Path, fps: float = 10.0) -> Path:
    """An mp4 of ``object_boxes``: a red disc and a green square crossing, a blue square that vanishes in ``GONE``."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (W, H))
    for f in range(NUM_FRAMES):
        rgb = np.full((H, W, 3), 128, np.uint8)
        for obj, (x0, y0, x1, y1) in object_boxes(f).items():
            if obj == 0:
                cv2.circle(rgb, ((x0 + x1) // 2, (y0 + y1) // 2), (x1 - x0) // 2, COLOURS[0], -1)
            else:
                cv2.rectangle(rgb, (x0, y0), (x1 - 1, y1 - 1), COLOURS[obj], -1)
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def colour_detector(images: list[np.ndarray], *_: object) -> list[dict[str, torch.Tensor]]:
    """A detector we control: each object found by its colour, its mask the pixels of that colour."""
    preds = []
    for rgb in images:
        diff = np.stack([np.abs(rgb.astype(int) - c).max(-1) for c in COLOURS.values()])  # (3, H, W)
        found = [(k, diff[k] < 60) for k in COLOURS if (diff[k] < 60).sum() > 30]
        boxes = [[m.nonzero()[1].min(), m.nonzero()[0].min(), m.nonzero()[1].max() + 1, m.nonzero()[0].max() + 1]
                 for _, m in found]
        masks = np.stack([m for _, m in found]) if found else np.zeros((0, H, W), bool)
        preds.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                      "scores": torch.full((len(found),), 0.9), "labels": torch.tensor([k for k, _ in found]).long(),
                      "masks": torch.from_numpy(masks), "class_label": torch.tensor(3)})
    return preds


def test_predict_video_tracks_the_objects_of_a_generated_clip(tmp_path, monkeypatch):
    clip = write_moving_shapes(tmp_path / "shapes.mp4")
    model = Fourm21Model(runner=None, model_config={}, meta={}, settings=None)  # the network is replaced below
    monkeypatch.setattr(model, "_predict_batch", colour_detector)
    tracker = Tracker("bytetrack")
    for batch_size in (1, 6):  # the same tracker serves video after video, ids from 0 each time
        with model.predict_video(clip, batch_size=batch_size, tracker=tracker) as stream:
            frames = list(stream)
        assert [f.index for f in frames] == list(range(NUM_FRAMES))
        seen = ids_per_object([f.pred for f in frames])
        assert {obj: {t for _, t in fs} for obj, fs in seen.items()} == {0: {0}, 1: {1}, 2: {2}}
        assert len(seen[0]) == len(seen[1]) == NUM_FRAMES - 1 and max(f for f, _ in seen[2]) == NUM_FRAMES - 1
        for f in frames:
            assert f.pred["class_label"] == 3
            for label, mask in zip(f.pred["labels"].tolist(), f.pred["masks"]):  # each mask is its object's pixels
                assert np.abs(f.image[mask.numpy()].mean(0) - COLOURS[label]).max() < 40
    untracked = list(model.predict_video(clip))
    assert all("track_ids" not in f.pred for f in untracked) and len(untracked[0].pred["boxes"]) == 3
    with pytest.raises(ConfigError, match="unknown tracker"):
        model.predict_video(clip, tracker="nope")
