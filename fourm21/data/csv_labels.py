"""Image-level label CSVs: multi-attribute (one column per attribute group) and multi-label with captions.

Attributes: an image path column plus one column per group with string values; an empty or
unknown value marks that group as missing for the image (its head skips the image).
Multi-label: ``ImageID,Labels,Caption`` (the COMP5329 format): space-separated class ids and a
free-text caption, RFC-4180 quoting (commas, quotes, line breaks inside captions). A row with no
labels (a test row) keeps its image and caption and trains nothing.

Class lists a config leaves out (the attribute ``groups`` and their values, the multi-label
``class_ids``) are read from the data: from ``classes_from`` / ``class_ids_from`` (the training CSV,
so a held-back CSV uses the training indices) or from the file itself. A held-back CSV may then hold
fewer ids or columns than the training one; a value, id or column the training CSV lacks counts as
missing (logged, counted in ``unknown`` / ``missing_columns``), as the heads cannot predict it.

A missing file or column, a file with no rows, text that is not UTF-8, and (multi-label) a class id
not in a ``class_ids`` the config gives are DatasetErrors naming the file (and line); an image that
cannot be read follows ``on_bad_image`` (see ``fourm21.data.images``).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from fourm21.data.images import SkipLog, check_policy, read_image_or_skip
from fourm21.data.sample import Sample
from fourm21.data.text import tokenize
from fourm21.data.transforms import transformed_image
from fourm21.errors import DatasetError

MISSING = -1

log = logging.getLogger(__name__)


def read_csv_rows(path: str | Path, required: Sequence[str]) -> list[dict[str, str]]:
    """Rows as dicts; a DatasetError naming the file and the column when a required column is absent."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"CSV not found: {path}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise DatasetError(f"{path}: missing column(s) {missing}; found {header}")
            rows = [{(k or "").strip(): (v if isinstance(v, str) else "").strip() for k, v in row.items()}
                    for row in reader]
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text (byte {e.start}); save the CSV as UTF-8") from None
    except csv.Error as e:
        raise DatasetError(f"{path}: malformed CSV ({e})") from None
    if not rows:
        raise DatasetError(f"{path}: no rows below the header")
    return rows


def attribute_classes(rows: list[dict[str, str]], groups: Sequence[str]) -> dict[str, list[str]]:
    """Per group, the sorted distinct non-empty values: the class list of that group's head."""
    return {g: sorted({r[g] for r in rows if r.get(g)}) for g in groups}


def attribute_groups(rows: list[dict[str, str]], image_col: str) -> list[str]:
    """The attribute groups of a CSV whose config names none: every column but the image column, in file order."""
    return [c for c in rows[0] if c and c != image_col]


def parse_label_ids(rows: list[dict[str, str]], labels_col: str, path: Path) -> list[list[int] | None]:
    """Each row's space-separated class ids (None for an empty cell); a DatasetError naming the line otherwise."""
    out: list[list[int] | None] = []
    for n, r in enumerate(rows, start=2):
        text = r[labels_col]
        try:
            out.append([int(t) for t in text.split()] if text else None)
        except ValueError:
            raise DatasetError(f"{path}, line {n}: labels '{text}' are not integers") from None
    return out


def multilabel_class_ids(ids_per_row: list[list[int] | None], path: Path, labels_col: str) -> list[int]:
    """The sorted distinct class ids of a multi-label CSV: the class list when the config gives none."""
    ids = sorted({c for ids in ids_per_row if ids for c in ids})
    if not ids:
        raise DatasetError(f"{path}: column '{labels_col}' holds no class ids to read the class list from; "
                           f"give it (data.class_ids=[...])")
    return ids


class AttributeDataset(Dataset):
    """Samples with ``attributes``: {group: class index or -1 when missing}."""

    def __init__(self, csv_path: str | Path, image_dir: str | Path, groups: Sequence[str] | None = None,
                 classes: dict[str, Sequence[str]] | None = None, image_col: str = "image",
                 transform: Any = None, source: str = "attributes", classes_from: str | Path | None = None,
                 on_bad_image: str = "error") -> None:
        """``groups``: the columns that become heads; None = those of ``classes``, else every column but
        ``image_col`` of ``classes_from`` (the training CSV) or of ``csv_path`` itself. ``classes`` fixes
        each group's class list; else they are read from ``classes_from`` (so val uses the training
        indices) or from ``csv_path``. Values outside the class list, and the groups of a column this file
        lacks (groups read from ``classes_from`` only), count as missing (logged; ``unknown``,
        ``missing_columns``)."""
        self.csv_path = Path(csv_path)
        self.image_dir = Path(image_dir)
        self.rows = read_csv_rows(self.csv_path, [image_col, *(groups or [])])
        self.image_col = image_col
        source_rows = None
        if classes_from and not classes:
            source_rows = read_csv_rows(classes_from, [*(groups or [image_col])])
        if not groups:
            groups = list(classes) if classes else attribute_groups(source_rows or self.rows, image_col)
            if not groups:
                raise DatasetError(f"{classes_from if source_rows else self.csv_path}: no attribute columns "
                                   f"besides '{image_col}'")
        self.groups = list(groups)
        self.missing_columns = [g for g in self.groups if g not in self.rows[0]]
        if self.missing_columns:
            log.warning("%s: no column(s) %s (the training CSV has them); counted as missing for every image",
                        self.csv_path, self.missing_columns)
        if not classes:
            classes = attribute_classes(source_rows or self.rows, self.groups)
        missing_groups = [g for g in self.groups if g not in classes]
        if missing_groups:
            raise DatasetError(f"attribute classes given for {sorted(classes)} but not for {missing_groups}")
        self.classes = {g: list(classes[g]) for g in self.groups}
        self.attribute_classes = self.classes
        self.index = {g: {c: i for i, c in enumerate(self.classes[g])} for g in self.groups}
        self.transform = transform
        self.source = source
        self.on_bad_image = check_policy(on_bad_image)
        self.skip_log = SkipLog(source, f"{self.csv_path.resolve()}|{self.image_dir.resolve()}")
        self.unknown: dict[str, int] = {g: 0 for g in self.groups}  # values not in a fixed class list
        for r in self.rows:
            for g in self.groups:
                if r.get(g) and r[g] not in self.index[g]:
                    self.unknown[g] += 1
        for g, n in self.unknown.items():
            if n:
                log.warning("%s: %d value(s) of column '%s' are not in its class list %s; counted as missing",
                            self.csv_path, n, g, self.classes[g])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Sample | None:
        row = self.rows[i]
        image = read_image_or_skip(self.image_dir / row[self.image_col], self.on_bad_image, self.skip_log)
        if image is None:
            return None
        return {"image": transformed_image(self.transform, image),
                "attributes": {g: self.index[g].get(row.get(g, ""), MISSING) for g in self.groups},
                "meta": {"image_id": i, "source": self.source, "file_name": row[self.image_col],
                         "orig_size": image.shape[:2]}}


class MultiLabelCaptionDataset(Dataset):
    """Samples with ``labels`` (multi-hot over ``class_ids``) and ``caption_tokens``."""

    def __init__(self, csv_path: str | Path, image_dir: str | Path, class_ids: Sequence[int] | None = None,
                 transform: Any = None, id_col: str = "ImageID", labels_col: str = "Labels",
                 caption_col: str = "Caption", num_buckets: int = 4096, max_tokens: int = 32,
                 source: str = "multilabel", on_bad_image: str = "error",
                 class_ids_from: str | Path | None = None) -> None:
        """``class_ids``: every id a Labels cell may hold, in head order (another id is a DatasetError);
        None = the sorted ids of ``class_ids_from`` (the training CSV) or of ``csv_path`` itself, and an id
        outside them is left out of its row (logged, counted in ``unknown``)."""
        self.csv_path = Path(csv_path)
        self.image_dir = Path(image_dir)
        self.rows = read_csv_rows(self.csv_path, [id_col, labels_col, caption_col])
        ids_per_row = parse_label_ids(self.rows, labels_col, self.csv_path)
        fixed = bool(class_ids)
        if fixed:
            self.class_ids = [int(c) for c in class_ids]
        elif class_ids_from:
            path = Path(class_ids_from)
            rows = read_csv_rows(path, [labels_col])
            self.class_ids = multilabel_class_ids(parse_label_ids(rows, labels_col, path), path, labels_col)
        else:
            self.class_ids = multilabel_class_ids(ids_per_row, self.csv_path, labels_col)
        self.index = {c: i for i, c in enumerate(self.class_ids)}
        self.cols = (id_col, labels_col, caption_col)
        self.transform = transform
        self.num_buckets, self.max_tokens = num_buckets, max_tokens
        self.source = source
        self.on_bad_image = check_policy(on_bad_image)
        self.skip_log = SkipLog(source, f"{self.csv_path.resolve()}|{self.image_dir.resolve()}")
        self.unknown: dict[int, int] = {}  # ids outside a class list read from the data: {id: rows}
        self.labels: list[list[int] | None] = []
        for n, ids in enumerate(ids_per_row, start=2):
            if ids is None:
                self.labels.append(None)
                continue
            unknown = [c for c in ids if c not in self.index]
            if unknown and fixed:
                raise DatasetError(f"{self.csv_path}, line {n}: unknown class id(s) {unknown}; "
                                   f"known: {self.class_ids}")
            for c in unknown:
                self.unknown[c] = self.unknown.get(c, 0) + 1
            self.labels.append([self.index[c] for c in ids if c in self.index])
        if self.unknown:
            log.warning("%s: class id(s) %s are not in the training CSV's %s; left out of their rows",
                        self.csv_path, sorted(self.unknown), self.class_ids)
        self.label_names = [str(c) for c in self.class_ids]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Sample | None:
        id_col, _, caption_col = self.cols
        row = self.rows[i]
        image = read_image_or_skip(self.image_dir / row[id_col], self.on_bad_image, self.skip_log)
        if image is None:
            return None
        sample: Sample = {
            "image": transformed_image(self.transform, image),
            "caption": row[caption_col],
            "caption_tokens": tokenize(row[caption_col], self.num_buckets, self.max_tokens),
            "meta": {"image_id": i, "source": self.source, "file_name": row[id_col], "orig_size": image.shape[:2]},
        }
        if self.labels[i] is not None:
            multi_hot = torch.zeros(len(self.class_ids))
            multi_hot[self.labels[i]] = 1.0
            sample["labels"] = multi_hot
        return sample
