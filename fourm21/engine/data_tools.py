"""fourm21-data: look at a data set the way training reads it, before training on it.

    fourm21-data check data=coco data.root=DIR      # counts, box statistics, label problems: data_report.json + PNGs
    fourm21-data show data=coco n=16 augment=true    # the ground truth of N samples drawn into show.png

The data sets are built as ``fourm21-train`` builds them (``instantiate(data.datamodule)``, ``setup("fit")``),
so what ``check`` reports is what training gets: a COCO file has passed ``check_coco`` (the annotations it
repaired or dropped are listed, with the totals the training report gives, ``data_report``), a CSV has its
class lists (read from the training CSV where the config leaves them out), and with ``decode=true`` every
image is read under ``data.on_bad_image``. ``show`` draws the samples as the network gets them (letterboxed;
with ``augment=true`` through the training augmentation), the ground truth drawn as predictions are.
"""

from __future__ import annotations

import json
import math
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from rich.console import Console
from rich.markup import escape
from rich.progress import track
from rich.table import Table

from fourm21.data.cifar10 import Cifar10Dataset
from fourm21.data.coco import REPAIRS, CocoDataset
from fourm21.data.csv_labels import MISSING, AttributeDataset, MultiLabelCaptionDataset
from fourm21.data.image_folder import ImageFolderDataset
from fourm21.data.images import skipped_images
from fourm21.data.transforms import pipelines_in, seed_pipeline
from fourm21.engine.common import CONFIG_DIR, friendly_errors, run_dir_of, setup_runtime
from fourm21.engine.validate_config import check_config
from fourm21.errors import ConfigError
from fourm21.inference.render import PALETTE, draw_frame, image_to_uint8
from fourm21.metrics.plots import subplots
from fourm21.training.evaluation import data_report

COMMANDS = ("check", "show")
SMALL_MEDIUM = (32, 96)  # COCO's small / medium / large boundaries: sqrt of the box area, pixels


@dataclass
class SplitStats:
    """What one data set of a split holds. ``per_class`` counts what its heads train on: boxes per detection
    class, images per image class, images per multi-label class, images per attribute value (``group=value``)."""

    images: int
    per_class: dict[str, int]
    empty_images: int = 0  # images without any of those labels
    image_classes: dict[str, int] = field(default_factory=dict)  # an image class next to boxes (shapes' scenes)
    missing_values: dict[str, int] = field(default_factory=dict)  # attribute group -> images without a value
    crowd: int = 0  # crowd regions: not training targets (COCOeval ignores their area)
    per_image: list[int] = field(default_factory=list)  # boxes (or multi-labels) of each image
    box_wh: list[tuple[float, float]] = field(default_factory=list)  # box width, height in original pixels
    problems: dict[str, tuple[int, str]] = field(default_factory=dict)  # kind -> (count, what training does)

    @property
    def instances(self) -> int:
        return sum(self.per_class.values())

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"images": self.images, "instances": self.instances,
                               "empty_images": self.empty_images, "per_class": self.per_class}
        if self.image_classes:
            out["image_classes"] = self.image_classes
        if self.missing_values:
            out["missing_values"] = self.missing_values
        if self.crowd:
            out["crowd"] = self.crowd
        if self.per_image:
            out["instances_per_image"] = {"mean": float(np.mean(self.per_image)), "max": int(max(self.per_image))}
        if self.box_wh:
            side = np.sqrt(np.prod(np.asarray(self.box_wh, dtype=np.float64), axis=1))
            lo, hi = SMALL_MEDIUM
            out["box_sizes"] = {"small": int((side < lo).sum()), "medium": int(((side >= lo) & (side < hi)).sum()),
                                "large": int((side >= hi).sum())}
        out["problems"] = {kind: n for kind, (n, _) in self.problems.items()}
        return out


def coco_stats(ds: CocoDataset) -> SplitStats:
    """From the checked annotations (``check_coco`` has repaired or dropped the faulty ones, as for training)."""
    st = SplitStats(images=len(ds.ids), per_class=dict.fromkeys(ds.class_names, 0))
    names = ds.image_class_names
    if ds.image_label_key is not None:
        st.image_classes = dict.fromkeys(names, 0)
    for image_id in ds.ids:
        anns = ds.coco.imgToAnns.get(image_id, [])
        kept = [a for a in anns if not a.get("iscrowd", 0)]
        st.crowd += len(anns) - len(kept)
        st.per_image.append(len(kept))
        st.empty_images += not kept
        for a in kept:
            st.per_class[ds.class_names[ds.cat_to_index[a["category_id"]]]] += 1
            st.box_wh.append((float(a["bbox"][2]), float(a["bbox"][3])))
        label = ds.coco.imgs[image_id].get(ds.image_label_key) if ds.image_label_key is not None else None
        if isinstance(label, int) and 0 <= label < len(names):
            st.image_classes[names[label]] += 1
    st.problems = {kind: (n, f"{ds.ann_file.name}: {REPAIRS[kind]}") for kind, n in ds.repairs.items()}
    return st


def classification_stats(ds: Cifar10Dataset | ImageFolderDataset) -> SplitStats:
    counts = np.bincount(np.asarray(ds.labels, dtype=np.int64), minlength=len(ds.image_class_names))
    return SplitStats(images=len(ds), per_class={n: int(c) for n, c in zip(ds.image_class_names, counts)})


def attribute_stats(ds: AttributeDataset) -> SplitStats:
    st = SplitStats(images=len(ds), per_class={f"{g}={v}": 0 for g in ds.groups for v in ds.classes[g]},
                    missing_values=dict.fromkeys(ds.groups, 0))
    for row in ds.rows:
        have = [g for g in ds.groups if row.get(g, "") in ds.index[g]]
        for g in ds.groups:
            if g in have:
                st.per_class[f"{g}={row[g]}"] += 1
            else:
                st.missing_values[g] += 1
        st.empty_images += not have
    for g, n in ds.unknown.items():
        if n:
            st.problems[f"unknown_value.{g}"] = (n, f"values of '{g}' not in its class list {ds.classes[g]}: "
                                                    f"counted as missing")
    if ds.missing_columns:
        st.problems["missing_column"] = (len(ds.missing_columns), f"{ds.csv_path.name} lacks column(s) "
                                         f"{ds.missing_columns} of the training CSV: missing for every image")
    return st


def multilabel_stats(ds: MultiLabelCaptionDataset) -> SplitStats:
    st = SplitStats(images=len(ds), per_class=dict.fromkeys(ds.label_names, 0))
    for labels in ds.labels:
        st.empty_images += not labels
        st.per_image.append(len(labels or []))
        for i in labels or []:
            st.per_class[ds.label_names[i]] += 1
    if ds.unknown:
        st.problems["unknown_class_id"] = (sum(ds.unknown.values()), f"class id(s) {sorted(ds.unknown)} not in "
                                           f"the training CSV's {ds.class_ids}: left out of their rows")
    return st


STATS = ((CocoDataset, coco_stats), (AttributeDataset, attribute_stats),
         (MultiLabelCaptionDataset, multilabel_stats), ((Cifar10Dataset, ImageFolderDataset), classification_stats))


def split_stats(ds: Any) -> SplitStats:
    """The statistics of one data set, with the images its reader left out as unreadable (``on_bad_image``)."""
    fn = next((f for kind, f in STATS if isinstance(ds, kind)), None)
    if fn is None:
        raise ConfigError(f"fourm21-data: no statistics for data sets of type {type(ds).__name__}")
    st = fn(ds)
    skipped = len(skipped_images([ds]))
    if skipped:
        st.problems["unreadable_image"] = (skipped, "images that cannot be read: left out (listed in "
                                                    "skipped_images.tsv)")
    return st


def build_datamodule(cfg: DictConfig) -> Any:
    """The data module and its sets as fourm21-train builds them."""
    check_config(cfg)
    setup_runtime(cfg)
    datamodule = instantiate(cfg.data.datamodule)
    datamodule.setup("fit")
    return datamodule


def named_sets(datamodule: Any, splits: tuple[str, ...] = ("train", "val")) -> dict[str, Any]:
    """``{split: data set}``; ``split/name`` where a split has several (mixed data)."""
    out = {}
    for split in splits:
        sets = getattr(datamodule, f"{split}_sets")
        for name, ds in sets.items():
            out[split if len(sets) == 1 else f"{split}/{name}"] = ds
    return out


def decode_all(sets: Mapping[str, Any]) -> None:
    """Read every sample, as a training epoch does: an unreadable image is skipped and logged, or (under
    ``data.on_bad_image=error``) stops with its name."""
    for name, ds in sets.items():
        for i in track(range(len(ds)), description=f"reading {name}", transient=True):
            ds[i]


def run_check(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """Write data_report.json (``{split: {"images", "instances", "empty_images", "per_class", ...}}``) and the
    plots into the run dir, print the tables. Returns the report."""
    run_dir = run_dir_of(cfg)
    datamodule = build_datamodule(cfg)
    sets = named_sets(datamodule)
    if cfg.decode:
        decode_all(sets)
    stats = {name: split_stats(ds) for name, ds in sets.items()}
    totals = data_report(datamodule, run_dir)  # what the training report counts (and skipped_images.tsv)
    report = {name: st.to_json() for name, st in stats.items()}
    (run_dir / "data_report.json").write_text(json.dumps(report, indent=2) + "\n")
    plots = plot_stats(stats, run_dir) if cfg.plots else []
    print_check(cfg, stats, totals, [run_dir / "data_report.json", *plots])
    return report


def _console() -> Console:
    console = Console()
    if not console.is_terminal:  # a log or a pipe: rich's 80 columns would cut class names
        console.width = max(console.width, 100)
    return console


def print_check(cfg: DictConfig, stats: Mapping[str, SplitStats], totals: Mapping[str, float],
                files: list[Path]) -> None:
    console = _console()
    names = list(stats)
    table = Table(title=f"data={cfg.data.get('name')}")
    crowd = any(st.crowd for st in stats.values())
    for col in ("split", "images", "instances", "empty images", "per image (mean / max)", "crowd", "problems"):
        if col != "crowd" or crowd:
            table.add_column(col, justify="left" if col == "split" else "right")
    for name, st in stats.items():
        per_image = f"{np.mean(st.per_image):.2f} / {max(st.per_image)}" if st.per_image else "-"
        table.add_row(escape(name), str(st.images), str(st.instances), str(st.empty_images), per_image,
                      *([str(st.crowd)] if crowd else []), str(sum(n for n, _ in st.problems.values())))
    console.print(table)
    for title, key in (("per class", "per_class"), ("image classes", "image_classes"),
                       ("images without a value", "missing_values")):
        rows = _union(getattr(st, key) for st in stats.values())
        if not rows:
            continue
        table = Table(title=title)
        table.add_column("class" if key != "missing_values" else "group", overflow="fold")
        for name in names:
            table.add_column(escape(name), justify="right")
        for c in rows:
            table.add_row(escape(c), *(str(getattr(stats[n], key).get(c, "-")) for n in names))
        console.print(table)
    problems = [(name, kind, n, what) for name, st in stats.items() for kind, (n, what) in st.problems.items()]
    if problems:
        table = Table(title="label problems (as training checks and repairs them)")
        for col in ("split", "kind", "count", "what training does"):
            table.add_column(col, justify="right" if col == "count" else "left", overflow="fold")
        for name, kind, n, what in problems:
            table.add_row(escape(name), kind, str(n), escape(what))
        console.print(table)
    else:
        console.print("label problems: none found")
    console.print("training report would count: " + ", ".join(f"{k} {int(v)}" for k, v in totals.items()))
    for path in files:
        console.print(f"wrote {escape(str(path))}", soft_wrap=True)


def _union(keys: Any) -> list[str]:
    """The keys of several dicts, each once, in the order first seen."""
    return list(dict.fromkeys(k for d in keys for k in d))


def _split_colours(names: list[str]) -> dict[str, np.ndarray]:
    return {n: PALETTE[(3 + i) % len(PALETTE)] for i, n in enumerate(names)}


def plot_class_counts(stats: Mapping[str, SplitStats], panels: list[tuple[str, str]],
                      colours: Mapping[str, np.ndarray], out_file: Path) -> Path:
    """Horizontal bars per class, one per split; a panel per ``(SplitStats field, title)``."""
    rows = max(len(_union(getattr(st, key) for st in stats.values())) for key, _ in panels)
    fig, axes = subplots(1, len(panels), figsize=(6 * len(panels), 1.2 + 0.28 * rows * len(stats) ** 0.5),
                         squeeze=False)
    for ax, (key, title) in zip(axes.flat, panels):
        classes = _union(getattr(st, key) for st in stats.values())
        y = np.arange(len(classes))
        height = 0.8 / len(stats)
        for k, (name, st) in enumerate(stats.items()):
            counts = [getattr(st, key).get(c, 0) for c in classes]
            ax.barh(y + k * height, counts, height, label=name, color=colours[name])
        ax.set_yticks(y + 0.4 - height / 2, classes, fontsize=7 if len(classes) > 30 else 9)
        ax.invert_yaxis()
        ax.set(xlabel="count", title=title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_file, dpi=110)
    return out_file


def plot_stats(stats: Mapping[str, SplitStats], run_dir: Path) -> list[Path]:
    """data_classes.png (counts per class and split), data_boxes.png (box size and aspect ratio) and
    data_per_image.png (instances per image), each where the data has them."""
    colours = _split_colours(list(stats))
    out = []
    panels = [(key, title) for key, title in (("per_class", "per class"), ("image_classes", "image classes"))
              if any(getattr(st, key) for st in stats.values())]
    if panels:
        out.append(plot_class_counts(stats, panels, colours, run_dir / "data_classes.png"))
    with_boxes = {n: np.asarray(st.box_wh, dtype=np.float64) for n, st in stats.items() if st.box_wh}
    if with_boxes:
        fig, axes = subplots(1, 2, figsize=(11, 4))
        sides = {n: np.sqrt(wh.prod(1)) for n, wh in with_boxes.items()}
        aspects = {n: np.log2(np.maximum(wh[:, 0], 1e-6) / np.maximum(wh[:, 1], 1e-6)) for n, wh in with_boxes.items()}
        lo = max(min(float(s.min()) for s in sides.values()), 0.5)
        hi = max(max(float(s.max()) for s in sides.values()), lo * 2)
        lim = min(6.0, max(1.0, math.ceil(max(float(np.abs(a).max()) for a in aspects.values()))))
        for n in with_boxes:
            weights = np.full(len(sides[n]), 1 / len(sides[n]))
            axes[0].hist(sides[n], bins=np.geomspace(lo, hi, 40), weights=weights, histtype="step", lw=1.5,
                         color=colours[n], label=f"{n} ({len(sides[n])})")
            axes[1].hist(aspects[n], bins=np.linspace(-lim, lim, 41), weights=weights, histtype="step", lw=1.5,
                         color=colours[n], label=n)
        for edge in SMALL_MEDIUM:
            axes[0].axvline(edge, color="grey", ls="--", lw=0.8)
        axes[0].set(xscale="log", xlabel="box size: sqrt(w * h), original pixels (COCO small | medium | large)",
                    ylabel="fraction of boxes", title="box size")
        axes[1].set(xlabel="aspect ratio: log2(w / h)", ylabel="fraction of boxes", title="box aspect ratio")
        for ax in axes:
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(run_dir / "data_boxes.png", dpi=110)
        out.append(run_dir / "data_boxes.png")
    per_image = {n: np.asarray(st.per_image) for n, st in stats.items() if st.per_image}
    if per_image:
        fig, ax = subplots(figsize=(6, 4))
        top = max(int(v.max()) for v in per_image.values())
        for n, v in per_image.items():
            ax.hist(v, bins=np.arange(top + 2) - 0.5, weights=np.full(len(v), 1 / len(v)), histtype="step", lw=1.5,
                    color=colours[n], label=f"{n} (mean {v.mean():.2f})")
        what = "boxes" if with_boxes else "labels"
        ax.set(xlabel=f"{what} per image", ylabel="fraction of images", title=f"{what} per image")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(run_dir / "data_per_image.png", dpi=110)
        out.append(run_dir / "data_per_image.png")
    return out


def without_augmentation(train_cfg: DictConfig) -> None:
    """The training sets' pipelines built as validation's (letterbox or resize, normalise), without mosaic."""
    nodes = [train_cfg]
    while nodes:
        node = nodes.pop()
        if str(node.get("_target_", "")).startswith("fourm21.data.transforms.") and "train" in node:
            node.train = False
        if "_target_" in node and "mosaic" in node:
            node.mosaic = 0.0
        nodes.extend(v for v in node.values() if isinstance(v, DictConfig))


def pick(sets: Mapping[str, Any], n: int, seed: int) -> list[tuple[Any, int]]:
    """``n`` (data set, index) pairs drawn without replacement, shared out over the sets."""
    rng = np.random.default_rng(seed)
    out = []
    for k, ds in enumerate(sets.values()):
        share = n // len(sets) + (k < n % len(sets))
        out += [(ds, int(i)) for i in sorted(rng.choice(len(ds), size=min(share, len(ds)), replace=False))]
    return out


def ground_truth(sample: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A sample's boxes and instance masks as the prediction drawings take them (every score 1); masks at the
    loss resolution (``mask_stride``) are enlarged to the image."""
    gt: dict[str, torch.Tensor] = {}
    if "boxes" not in sample:
        return gt
    gt = {"boxes": sample["boxes"], "labels": sample["box_labels"], "scores": torch.ones(len(sample["boxes"]))}
    masks = sample.get("masks")
    if masks is not None and len(masks) == len(sample["boxes"]) and len(masks):
        h, w = sample["image"].shape[-2:]
        gt["masks"] = torch.nn.functional.interpolate(masks[None].float(), size=(h, w), mode="nearest")[0] >= 0.5
    return gt


def label_lines(sample: Mapping[str, Any], ds: Any) -> list[str]:
    """Attributes, multi-labels and the caption of a sample, one line each."""
    lines = []
    classes = getattr(ds, "attribute_classes", None) or {}
    for g, v in (sample.get("attributes") or {}).items():
        lines.append(f"{g}: {classes[g][v] if v != MISSING else '-'}")
    if "labels" in sample:
        names = getattr(ds, "label_names", [])
        on = [names[i] if i < len(names) else str(i) for i in torch.nonzero(sample["labels"]).flatten().tolist()]
        lines.append("labels: " + (" ".join(on) or "-"))
    if sample.get("caption"):
        lines.append(textwrap.shorten(sample["caption"], 42))
    return lines


def plot_ground_truth(items: list[tuple[Mapping[str, Any], Any]], out_file: Path, semantic: bool = True) -> Path:
    """A grid of samples with their ground truth drawn as predictions are (``draw_frame``): boxes and
    masks in their class colours, the image class as title, attributes / multi-labels / caption top left;
    with ``semantic``, the semantic map in a panel of its own next to each image that has one."""
    panels = 2 if semantic and any("semantic" in s for s, _ in items) else 1
    cols = min(4, len(items))
    rows = math.ceil(len(items) / cols)
    fig, axes = subplots(rows, cols * panels, figsize=(3 * cols * panels, 3.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (sample, ds) in enumerate(items):
        r, c = divmod(i, cols)
        ax = axes[r, c * panels]
        image = image_to_uint8(sample["image"])
        ax.imshow(draw_frame(image, ground_truth(sample), getattr(ds, "class_names", []), [], score_thr=0.0,
                             show_scores=False))  # ground truth has no score to show
        names, label = getattr(ds, "image_class_names", []), sample.get("label")
        title = [names[label] if label < len(names) else str(label)] if label is not None else []
        title.append(Path(str(sample.get("meta", {}).get("file_name", ""))).name)
        ax.set_title("\n".join(t for t in title if t), fontsize=7)
        for k, line in enumerate(label_lines(sample, ds)):
            ax.text(0.01, 0.99 - 0.08 * k, line, transform=ax.transAxes, fontsize=6, va="top", color="white",
                    bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "lw": 0})
        if panels == 2 and "semantic" in sample:
            axes[r, c * panels + 1].imshow(draw_frame(image, {"semantic": sample["semantic"]}, [], [], semantic=True))
            axes[r, c * panels + 1].set_title("semantic", fontsize=7)
    fig.tight_layout()
    fig.savefig(out_file, dpi=130)
    return out_file


def run_show(cfg: DictConfig) -> Path:
    """Draw ``n`` samples of ``split`` (through the training augmentation with ``augment``) into show.png."""
    if not isinstance(cfg.n, int) or isinstance(cfg.n, bool) or cfg.n < 1:
        raise ConfigError(f"n: the number of samples to draw, an integer >= 1, got {cfg.n!r}")
    if cfg.split not in ("train", "val"):
        raise ConfigError(f"split: must be train or val, got {cfg.split!r}")
    if cfg.augment and cfg.split != "train":
        raise ConfigError("augment: true draws through the training augmentation, which only split=train has")
    if not cfg.augment:
        without_augmentation(cfg.data.datamodule.train)
    run_dir = run_dir_of(cfg)
    datamodule = build_datamodule(cfg)
    sets = named_sets(datamodule, (cfg.split,))
    datamodule.clock.set(epoch=0, seed=cfg.seed)  # mosaic draws read the clock, as in the first training epoch
    items = []
    for ds, i in pick(sets, cfg.n, cfg.seed):
        for k, pipeline in enumerate(pipelines_in(ds)):  # as the data module seeds each training sample
            seed_pipeline(pipeline, (cfg.seed, 0, i, k))
        sample = ds[i]
        if sample is not None:  # an unreadable image under data.on_bad_image=skip
            items.append((sample, ds))
    if not items:
        raise ConfigError(f"split={cfg.split}: no sample could be read")
    path = plot_ground_truth(items, run_dir / "show.png", semantic=cfg.semantic)
    how = "after the training augmentation" if cfg.augment else "without augmentation"
    _console().print(f"{len(items)} {cfg.split} samples of data={cfg.data.get('name')} ({how}): wrote "
                     f"{escape(str(path))}", soft_wrap=True)
    return path


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="data_tools")
@friendly_errors
def _main(cfg: DictConfig) -> None:
    if cfg.command not in COMMANDS:
        raise ConfigError(f"command: must be one of {list(COMMANDS)}, got {cfg.command!r}")
    if cfg.command == "check":
        run_check(cfg)
    else:
        run_show(cfg)


def main() -> None:
    """``fourm21-data check|show [key=value ...]``: the first word is the command (``command=...`` for Hydra)."""
    args = sys.argv[1:]
    if args and "=" not in args[0] and not args[0].startswith("-"):
        if args[0] not in COMMANDS:
            print(f"fourm21: ConfigError: unknown command '{args[0]}'; use fourm21-data {'|'.join(COMMANDS)} "
                  f"[key=value ...]", file=sys.stderr)
            sys.exit(2)
        sys.argv = [sys.argv[0], f"command={args[0]}", *args[1:]]
    _main()


if __name__ == "__main__":
    main()
