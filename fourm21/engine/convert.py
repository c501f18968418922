"""fourm21-convert: labels of another tool (YOLO txt, Pascal VOC XML, LabelMe JSON) into the COCO layout, once.

    fourm21-convert format=yolo src=datasets/coco128-seg out=data/coco128-seg
    fourm21-train experiment=coco data.root=data/coco128-seg data.num_classes=80

The COCO reader then stays the one detection loader; see docs/data_formats.md.
"""

from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig, OmegaConf

from fourm21.data.formats import convert
from fourm21.engine.common import CONFIG_DIR, friendly_errors, run_dir_of
from fourm21.errors import ConfigError


def next_steps(summary: dict) -> list[str]:
    """The commands that train on (and check) what was written."""
    out, n = summary["out"], len(summary["categories"])
    masks = any(s["masks"] for s in summary["splits"].values())
    cmd = f"fourm21-train experiment=coco data.root={out} data.num_classes={n}"
    if not masks:
        cmd += " model.heads.inst.enabled=false model.heads.sem.enabled=false"  # box-only labels: no masks to learn
    sem = summary["splits"].get("train", {}).get("semantic_dir")
    if sem:
        cmd += f" data.datamodule.train.semantic_dir={sem}"
        val = summary["splits"].get("val", {}).get("semantic_dir")
        cmd += f" data.datamodule.val.semantic_dir={val}" if val else ""
    return [cmd]


def print_summary(summary: dict) -> None:
    print(f"{summary['format']} -> COCO: {summary['out']} ({len(summary['categories'])} classes)")
    print(f"{'split':<8}{'images':>8}{'objects':>9}{'masks':>8}  repairs the COCO reader will make")
    for split, s in summary["splits"].items():
        repairs = ", ".join(f"{k}: {v}" for k, v in s["repairs"].items()) or "none"
        print(f"{split:<8}{s['images']:>8}{s['annotations']:>9}{s['masks']:>8}  {repairs}")
    pose = {split: s["keypoints"] for split, s in summary["splits"].items() if "keypoints" in s}
    if pose:  # YOLO pose labels: written as COCO keypoints
        print("keypoints: objects with labelled keypoints: " + ", ".join(f"{k} {n}" for k, n in pose.items()))
    for note, count in summary["notes"].items():
        print(f"note: {count} {note}")
    if summary["skipped_images"]:
        print(f"note: {len(summary['skipped_images'])} images left out (on_bad_image=skip), listed in the run dir")
    for cmd in next_steps(summary):
        print(f"train: {cmd}")


def run_convert(cfg: DictConfig) -> dict:
    """Convert as ``cfg`` says; the summary is printed and saved as ``convert_report.json`` in the run dir."""
    options = OmegaConf.to_container(cfg[cfg.format], resolve=True) if cfg.format in ("voc", "labelme") else {}
    names = OmegaConf.to_container(cfg.names, resolve=True) if OmegaConf.is_list(cfg.names) else cfg.names
    if names is not None and not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise ConfigError(f"names: a list of class names, e.g. names=[cat,dog], got {names!r}")
    summary = convert(cfg.format, cfg.src, cfg.out, images=cfg.images, overwrite=bool(cfg.overwrite), names=names,
                      val_fraction=cfg.val_fraction, seed=cfg.seed, on_bad_image=cfg.on_bad_image, **options)
    (run_dir_of(cfg) / "convert_report.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print_summary(summary)
    return summary


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="convert")
@friendly_errors
def main(cfg: DictConfig) -> None:
    run_convert(cfg)


if __name__ == "__main__":
    main()
