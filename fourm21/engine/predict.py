"""fourm21-predict: run a trained model on images, videos or a camera; overlays, predictions and a summary.

    fourm21-predict ckpt_path=runs/.../best.ckpt source=photos/ score_thr=0.4
    fourm21-predict ckpt_path=runs/.../best.ckpt source=clip.mp4     # or source=0 for the webcam
    fourm21-predict ckpt_path=runs/.../best.ckpt source=clip.mp4 track=bytetrack   # a track_id per detection
"""

from __future__ import annotations

import json
import time
from collections import Counter, deque
from pathlib import Path

import cv2
import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.progress import Progress, TextColumn

from fourm21.data.images import SkipLog, check_policy, read_image_or_skip
from fourm21.data.video import list_media
from fourm21.engine.common import CONFIG_DIR, friendly_errors, run_dir_of
from fourm21.errors import ConfigError
from fourm21.inference.loading import load
from fourm21.inference.model import Fourm21Model, FramePrediction
from fourm21.inference.render import draw_frame, save_overlay
from fourm21.inference.results import caption_lines, coco_entries, image_fields, image_json, object_entries
from fourm21.inference.tracking import Tracker
from fourm21.tasks import override_values


def read_captions(path: str | None) -> dict[str, str]:
    """{file name: caption} from a CSV with ImageID and Caption columns (the multi-label format)."""
    if not path:
        return {}
    from fourm21.data.csv_labels import read_csv_rows
    return {Path(r["ImageID"]).name: r["Caption"] for r in read_csv_rows(path, ["ImageID", "Caption"])}


def overlay_caption_lines(pred: dict[str, torch.Tensor], model: Fourm21Model) -> list[str]:
    """The lines drawn in the top left of an overlay (attributes, multi-labels ...)."""
    return caption_lines(pred, model.meta, model.settings)


def frame_record(frame: FramePrediction, model: Fourm21Model, masks: bool = True) -> dict:
    """One JSON line of a video: frame index, time, size, image class, attributes / labels, detections
    (bbox xyxy in original pixels, score, category id and name, RLE mask with ``masks``; ``track_id``
    first when the frame was tracked)."""
    h, w = frame.image.shape[:2]
    record: dict = {"frame": frame.index, "time_s": round(frame.time_s, 4), "width": w, "height": h}
    record.update(image_fields(frame.pred, model.meta, model.settings))
    dets = object_entries(frame.pred, model.meta, model.settings, masks)
    for d in dets:
        d["bbox"] = [round(v, 2) for v in d["bbox"]]
    if "track_ids" in frame.pred:
        dets = [{"track_id": int(t), **d} for t, d in zip(frame.pred["track_ids"].tolist(), dets)]
    record["detections"] = dets
    return record


class AnnotatedVideo:
    """An mp4 written frame by frame; the size is fixed by the first frame (padded to even sides, which
    mp4 encoders need), later frames are fitted to it."""

    def __init__(self, path: Path, fps: float, fourcc: str) -> None:
        self.path, self.fps, self.fourcc = path, fps, fourcc
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] = (0, 0)

    def write(self, rgb: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 RGB frame."""
        if self._writer is None:
            h, w = rgb.shape[:2]
            self._size = (w + w % 2, h + h % 2)
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, self._size)
            if not self._writer.isOpened():
                raise ConfigError(f"video_fourcc: OpenCV cannot write {self.path} with {self.fourcc!r}")
        h, w = rgb.shape[:2]
        if (w + w % 2, h + h % 2) == self._size:
            rgb = cv2.copyMakeBorder(rgb, 0, h % 2, 0, w % 2, cv2.BORDER_REPLICATE) if h % 2 or w % 2 else rgb
        else:
            rgb = cv2.resize(rgb, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def release(self) -> bool:
        """Finish the file; False when no frame was written (and no file exists)."""
        if self._writer is None:
            return False
        self._writer.release()
        return True


def _rate(done: int, start: float, unit: str) -> str:
    elapsed = time.perf_counter() - start
    return f"{done / elapsed:.1f} {unit}/s" if elapsed > 0 and done else ""


def _new_progress() -> Progress:
    return Progress(*Progress.get_default_columns(), TextColumn("{task.fields[rate]}"), transient=False)


def predict_images(cfg: DictConfig, model: Fourm21Model, files: list[Path], run_dir: Path,
                   progress: Progress, report: list[str]) -> dict:
    """Overlays and the COCO-format ``predictions.json`` for image files; returns its content and adds
    the summary lines to ``report``."""
    overlays = run_dir / "overlays"
    if cfg.save_overlays:
        overlays.mkdir(parents=True, exist_ok=True)
    captions = read_captions(cfg.get("captions"))
    images, annotations, counts, top_classes = [], [], Counter(), Counter()
    skips = SkipLog("predict")
    task = progress.add_task("images", total=len(files), rate="")
    start = time.perf_counter()
    for first in range(0, len(files), cfg.batch_size):
        policy = cfg.get("on_bad_image", "skip")
        read = [(f, read_image_or_skip(f, policy, skips)) for f in files[first:first + cfg.batch_size]]
        chunk, arrays = [f for f, a in read if a is not None], [a for _, a in read if a is not None]
        progress.update(task, advance=len(read) - len(chunk))
        if not chunk:
            continue
        texts = [captions.get(Path(f).name, "") for f in chunk] if captions else None
        preds = model.predict(arrays, batch_size=len(arrays), img_size=cfg.get("img_size"), captions=texts)
        for f, arr, pred in zip(chunk, arrays, preds):
            image_id = len(images) + 1
            entry = image_json(pred, model.meta, model.settings, image_id, str(f), arr.shape[:2])
            if "classification" in entry:
                top_classes[entry["classification"]["class_name"]] += 1
            images.append(entry)
            dets = coco_entries(pred, image_id, model.meta, model.settings)
            for d in dets:
                d["id"] = len(annotations) + 1
                annotations.append(d)
                counts[d["category_name"]] += 1
            if cfg.save_overlays:
                save_overlay(arr, pred, model.class_names, model.image_class_names,
                             overlays / f"{image_id:06d}_{Path(f).stem}.png", cfg.score_thr, cfg.show_semantic,
                             caption_lines=overlay_caption_lines(pred, model), settings=model.settings)
        progress.update(task, advance=len(chunk), rate=_rate(len(images), start, "images"))
    cat_ids = model.meta.get("cat_ids") or list(range(1, len(model.class_names) + 1))
    categories = [{"id": c, "name": n} for c, n in zip(cat_ids, model.class_names)]
    result = {"images": images, "annotations": annotations, "categories": categories}
    (run_dir / "predictions.json").write_text(json.dumps(result))
    report.append(f"{len(images)} images, {len(annotations)} detections"
                  + (f": {dict(counts.most_common(10))}" if counts else ""))
    skipped = skips.entries()
    if skipped:
        result["skipped_images"] = [{"file_name": f, "reason": r} for f, r in skipped.items()]
        (run_dir / "predictions.json").write_text(json.dumps(result))
        report.append(f"{len(skipped)} unreadable images skipped (listed in predictions.json under skipped_images)")
    if top_classes:
        report.append(f"image classes: {dict(top_classes.most_common(10))}")
    report.append(f"results: {run_dir / 'predictions.json'}" + (f", overlays: {overlays}" if cfg.save_overlays else ""))
    return result


def update_trails(trails: dict[int, deque], pred: dict[str, torch.Tensor], length: int) -> dict[int, deque]:
    """The box centres of the last ``length`` frames of each track in this frame (a lost track's trail ends)."""
    if "track_ids" not in pred or length < 1:
        return {}
    centres = ((pred["boxes"][:, :2] + pred["boxes"][:, 2:]) / 2).tolist()
    kept = {}
    for t, c in zip(pred["track_ids"].tolist(), centres):
        kept[t] = trails.get(t, deque(maxlen=length))
        kept[t].append(tuple(c))
    return kept


def track_classes(labels: dict[int, Counter]) -> dict[str, int]:
    """Tracks per class, a track counted once under the class it was detected as most often."""
    return dict(Counter(c.most_common(1)[0][0] for c in labels.values()).most_common())


def tracker_from_config(cfg: DictConfig) -> Tracker | None:
    """The tracker ``track`` names with the ``tracker`` settings, or None when ``track`` is null."""
    name = cfg.get("track")
    if name is None:
        return None
    settings = cfg.get("tracker") or {}
    if not isinstance(settings, DictConfig | dict):
        raise ConfigError(f"tracker: a mapping of tracker settings, got {settings!r}")
    return Tracker(str(name), **(OmegaConf.to_container(settings, resolve=True) if isinstance(settings, DictConfig)
                                 else settings))


def predict_video(cfg: DictConfig, model: Fourm21Model, source: Path | int, out_stem: Path,
                  progress: Progress, report: list[str], tracker: Tracker | None = None) -> dict:
    """One video or camera through ``model.predict_video``: ``<out_stem>.jsonl`` (a line per frame) and,
    with ``save_overlays``, the annotated ``<out_stem>.mp4``. Ctrl-C ends a camera stream cleanly.
    With a ``tracker`` each detection carries its ``track_id`` and the summary counts tracks per class."""
    stream = model.predict_video(source, batch_size=cfg.batch_size, img_size=cfg.get("img_size"),
                                 max_frames=cfg.max_frames, tracker=tracker)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    lines_file = out_stem.with_suffix(".jsonl")
    video = AnnotatedVideo(out_stem.with_suffix(".mp4"), stream.fps or 30.0, str(cfg.video_fourcc))
    frames, counts = 0, Counter()
    track_labels: dict[int, Counter] = {}
    trails: dict[int, deque] = {}
    task = progress.add_task(stream.name, total=stream.frame_count, rate="")
    start = time.perf_counter()
    try:
        with stream, lines_file.open("w") as lines:
            for frame in stream:
                record = frame_record(frame, model, cfg.video_masks)
                lines.write(json.dumps(record) + "\n")
                counts.update(d["category_name"] for d in record["detections"])
                for d in record["detections"] if tracker is not None else ():
                    track_labels.setdefault(d["track_id"], Counter())[d["category_name"]] += 1
                if cfg.save_overlays:
                    trails = update_trails(trails, frame.pred, int(cfg.get("track_trail") or 0))
                    video.write(draw_frame(frame.image, frame.pred, model.class_names, model.image_class_names,
                                           cfg.score_thr, cfg.show_semantic, overlay_caption_lines(frame.pred, model),
                                           trails=trails, settings=model.settings))
                frames += 1
                progress.update(task, advance=1, rate=_rate(frames, start, "frames"))
    except KeyboardInterrupt:
        if not stream.reader.is_camera:
            raise
    finally:
        written = video.release()
    seconds = time.perf_counter() - start
    summary = {"source": str(source), "frames": frames, "detections": sum(counts.values()),
               "frames_per_s": round(frames / seconds, 2) if seconds > 0 else None,
               "jsonl": str(lines_file), "video": str(video.path) if written else None}
    report.append(f"{stream.name}: {frames} frames ({summary['frames_per_s']} frames/s), {summary['detections']} "
                  "detections" + (f": {dict(counts.most_common(10))}" if counts else ""))
    if tracker is not None:
        summary["tracker"], summary["tracks"] = tracker.name, track_classes(track_labels)
        report.append(f"{stream.name}: {len(track_labels)} tracks ({tracker.name})"
                      + (f": {summary['tracks']}" if track_labels else ""))
    report.append(f"results: {lines_file}" + (f", {video.path}" if written else ""))
    return summary


def check_config(cfg: DictConfig) -> None:
    """The predict keys a run would otherwise trip over half-way."""
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size: must be >= 1, got {cfg.batch_size}")
    if cfg.max_frames is not None and cfg.max_frames < 1:
        raise ConfigError(f"max_frames: must be >= 1 or null, got {cfg.max_frames}")
    if (cfg.get("track_trail") or 0) < 0:
        raise ConfigError(f"track_trail: must be >= 0, got {cfg.track_trail}")
    if len(str(cfg.video_fourcc)) != 4:
        raise ConfigError(f"video_fourcc: four characters such as mp4v, got {cfg.video_fourcc!r}")
    check_policy(cfg.get("on_bad_image", "skip"), "on_bad_image")


def run_predict(cfg: DictConfig) -> dict:
    """Images -> overlays + predictions.json; each video (or camera) -> videos/<name>.mp4 + .jsonl."""
    check_config(cfg)
    tracker = tracker_from_config(cfg)  # a bad name or setting fails before the model loads
    run_dir = run_dir_of(cfg)
    files, videos = list_media(cfg.source)
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model: Fourm21Model = load(cfg.ckpt_path, device)
    model.set_thresholds(**override_values(cfg))
    result: dict = {}
    report: list[str] = []
    with _new_progress() as progress:
        if files:
            result = predict_images(cfg, model, files, run_dir, progress, report)
        stems: Counter[str] = Counter()
        summaries = []
        for source in videos:
            stem = f"camera{source}" if isinstance(source, int) else Path(source).stem
            stems[stem] += 1
            name = stem if stems[stem] == 1 else f"{stem}_{stems[stem]}"  # same name in two sub-folders
            summaries.append(predict_video(cfg, model, source, run_dir / "videos" / name, progress, report, tracker))
        if summaries:
            result["videos"] = summaries
    print("\n".join(report))
    return result


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
@friendly_errors
def main(cfg: DictConfig) -> None:
    run_predict(cfg)


if __name__ == "__main__":
    main()
