"""Object identities across video frames: one frame's predictions in, the same predictions with a ``track_ids``
entry out, from a tracker of roboflow's ``trackers`` library (ByteTrack, SORT, OC-SORT, BoT-SORT).

This module is the one place that speaks the library's language (``supervision.Detections``); the rest
of fourm21 sees prediction dicts. A detection keeps its mask, keypoints, score and class when it joins a track, and
the image-level predictions (class, attributes, labels, semantic map) are left as they are.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fourm21.errors import ConfigError
from fourm21.tasks.registry import registered


def detection_keys() -> list[str]:
    """The per-detection entries of a prediction dict (first dimension N), as the registered tasks name them
    (``Task.detection_keys``); everything else is image-level."""
    return list(dict.fromkeys(k for task in registered().values() for k in task.detection_keys))


def _tracker_classes() -> dict[str, tuple[type, bool]]:
    """{name: (trackers-library class, whether its ``update`` uses the frame pixels)}; imported on first use."""
    try:
        from trackers import BoTSORTTracker, ByteTrackTracker, OCSORTTracker, SORTTracker
    except ImportError:
        raise ConfigError("track: the 'trackers' package is not installed; pip install 'fourm21[track]' "
                          "(or track=null)") from None
    return {"bytetrack": (ByteTrackTracker, False), "sort": (SORTTracker, False),
            "ocsort": (OCSORTTracker, False), "botsort": (BoTSORTTracker, True)}  # BoT-SORT: camera motion


TRACKER_NAMES = ("bytetrack", "botsort", "ocsort", "sort")


class Tracker:
    """A multi-object tracker for one video at a time; ``predict_video(..., tracker=...)`` drives it.

    ``name`` picks the algorithm (one of ``TRACKER_NAMES``); ``settings`` are keyword arguments of its
    class in the ``trackers`` library (``lost_track_buffer``, ``track_activation_threshold``,
    ``minimum_consecutive_frames``, ...); a setting that is None keeps the library's default. Both are
    checked here: an unknown name or setting raises ``ConfigError``.

    Tracking is class-agnostic (boxes are matched by IoU and motion). Only detections that belong to a
    confirmed track are kept (in the decoder's order), so every kept detection has a track id (ids count
    from 0 per video); a new object is reported from the frame its track is confirmed on."""

    def __init__(self, name: str = "bytetrack", **settings: Any) -> None:
        classes = _tracker_classes()
        if name not in classes:
            raise ConfigError(f"track: unknown tracker {name!r}; one of {', '.join(TRACKER_NAMES)} (or null for none)")
        self.name = name
        self._cls, self._uses_frame = classes[name]
        self.settings = {k: v for k, v in settings.items() if v is not None}
        accepted = set(inspect.signature(self._cls).parameters) - {"frame_rate", "state_estimator_class", "iou"}
        for key in self.settings:
            if key not in accepted:
                raise ConfigError(f"tracker.{key}: {name} has no such setting; it takes {', '.join(sorted(accepted))}")
        self.start()  # the settings' values are checked by the library now, not at the first frame

    def start(self, frame_rate: float = 30.0) -> None:
        """Forget all tracks and restart ids at 0: call before each video. ``frame_rate`` (frames per second)
        scales ``lost_track_buffer``, which the library counts in frames at 30 fps."""
        try:
            self._impl = self._cls(frame_rate=frame_rate if frame_rate > 0 else 30.0, **self.settings)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"tracker: {self.name} rejects {self.settings}: {e}") from e

    def update(self, pred: dict[str, torch.Tensor], image: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """The next frame's predictions (``Fourm21Model.predict``'s dict, original pixels) -> a copy whose
        detections are the tracked ones, each with its id in ``track_ids`` (N,) int64. ``image`` is the
        (H, W, 3) uint8 RGB frame, used by trackers that compensate camera motion (BoT-SORT)."""
        import supervision as sv

        out = dict(pred)
        if "boxes" not in pred:
            return out
        boxes = pred["boxes"].detach().cpu().float().numpy().reshape(-1, 4)
        detections = sv.Detections(xyxy=boxes, confidence=pred["scores"].detach().cpu().float().numpy(),
                                    class_id=pred["labels"].detach().cpu().numpy().astype(int),
                                    data={"index": np.arange(len(boxes))})
        frame = np.ascontiguousarray(image[..., ::-1]) if self._uses_frame and image is not None else None
        tracked = self._impl.update(detections, frame) if self._uses_frame else self._impl.update(detections)
        ids = np.asarray(tracked.tracker_id if tracked.tracker_id is not None else [], dtype=np.int64)
        index = np.asarray(tracked.data.get("index", np.zeros(0)), dtype=np.int64)[ids >= 0]
        order = np.argsort(index)  # back to the decoder's order (by score)
        keep = torch.from_numpy(index[order])
        for key in detection_keys():
            if key in pred:
                out[key] = pred[key][keep.to(pred[key].device)]
        out["track_ids"] = torch.from_numpy(ids[ids >= 0][order])
        return out

    def __call__(self, preds: Sequence[dict[str, torch.Tensor]],
                 images: Sequence[np.ndarray] | None = None) -> list[dict[str, torch.Tensor]]:
        """``update`` over a batch of consecutive frames, in order."""
        return [self.update(p, images[i] if images is not None else None) for i, p in enumerate(preds)]

