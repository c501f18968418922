"""Image-level labels from a CSV beside any detection folder (``data.image_labels``).

A user's tags usually sit in a table next to the boxes (Oxford Pets' breed and species, a shop's product
line): one row per image, a file-name column and label columns. One column becomes the image class (the
softmax head), others attribute groups (one softmax head each). The same CSV serves every split, so the
class lists (the sorted values of the whole file, or the config's) are the same for train and val.

Rows are matched to images by the file name as the annotation file writes it, else by its base name (a
YOLO or VOC folder converted into the COCO layout keeps sub-folders in ``file_name``). An empty cell is a
missing label for that image (its head skips the image); an image without a row is missing every label.
A missing file or column, an empty or repeated file name and a value outside a list the config fixes are
DatasetErrors naming the file and line.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

from fourm21.data.csv_labels import MISSING, attribute_classes, read_csv_rows
from fourm21.errors import DatasetError

log = logging.getLogger(__name__)


class ImageTags:
    """The image class and attribute values of each file a CSV names.

    ``class_col``: the column of the image class; ``groups``: the attribute columns. Both None: a CSV with
    one label column gives the image class, one with several gives an attribute group per column.
    ``classes`` ({column: [values]}) fixes value lists; a value outside one is a DatasetError."""

    def __init__(self, path: str | Path, file_col: str = "file_name", class_col: str | None = None,
                 groups: Sequence[str] | None = None, classes: Mapping[str, Sequence[str]] | None = None) -> None:
        self.path = Path(path)
        rows = read_csv_rows(self.path, [file_col, *([class_col] if class_col else []), *(groups or [])])
        if class_col is None and groups is None:
            columns = [c for c in rows[0] if c and c != file_col]
            if not columns:
                raise DatasetError(f"{self.path}: no label column besides '{file_col}'")
            class_col, groups = (columns[0], []) if len(columns) == 1 else (None, columns)
        self.file_col, self.class_col, self.groups = file_col, class_col, list(groups or [])
        if class_col in self.groups:
            raise DatasetError(f"{self.path}: column '{class_col}' is both the image class and an attribute group")
        columns = ([class_col] if class_col else []) + self.groups
        fixed = {str(k): [str(v) for v in vs] for k, vs in (classes or {}).items()}
        values = attribute_classes(rows, columns)
        values.update({c: fixed[c] for c in columns if c in fixed})
        self.class_names: list[str] = values[class_col] if class_col else []
        self.attribute_classes: dict[str, list[str]] = {g: values[g] for g in self.groups}
        index = {c: {v: i for i, v in enumerate(values[c])} for c in columns}
        self._by_name: dict[str, tuple[int, dict[str, int]]] = {}
        by_base: dict[str, list[str]] = {}
        for line, row in enumerate(rows, start=2):
            name = row[file_col]
            if not name:
                raise DatasetError(f"{self.path}, line {line}: empty '{file_col}' (each row names its image)")
            if name in self._by_name:
                raise DatasetError(f"{self.path}, line {line}: '{name}' has a row already; one row per image")
            for c in columns:
                if row.get(c) and row[c] not in index[c]:
                    raise DatasetError(f"{self.path}, line {line}: {c} '{row[c]}' is not one of {values[c]} "
                                       f"(data.image_label_classes.{c})")
            label = index[class_col].get(row.get(class_col, ""), MISSING) if class_col else MISSING
            self._by_name[name] = (label, {g: index[g].get(row.get(g, ""), MISSING) for g in self.groups})
            by_base.setdefault(PurePosixPath(name.replace("\\", "/")).name, []).append(name)
        self._by_base = {base: names[0] for base, names in by_base.items() if len(names) == 1}
        self.unmatched = 0  # images of a data set without a row (counted by ``match``)

    def lookup(self, file_name: str) -> tuple[int, dict[str, int]] | None:
        """(image class or MISSING, {group: value or MISSING}) of an image, or None when no row names it."""
        hit = self._by_name.get(file_name)
        if hit is None:
            key = self._by_base.get(PurePosixPath(file_name.replace("\\", "/")).name)
            hit = self._by_name.get(key) if key is not None else None
        return hit

    def match(self, file_names: Sequence[str], where: str) -> dict[str, tuple[int, dict[str, int]]]:
        """The rows of ``file_names`` (a data set's images); the images without one are logged once."""
        found = {f: hit for f in file_names if (hit := self.lookup(f)) is not None}
        self.unmatched = len(file_names) - len(found)
        if not found:
            raise DatasetError(f"{self.path}: no row names an image of {where} (its '{self.file_col}' column "
                               f"holds file names such as {next(iter(self._by_name), '?')!r})")
        if self.unmatched:
            log.warning("%s: %d of the %d images of %s have no row; their image-level labels are missing",
                        self.path, self.unmatched, len(file_names), where)
        return found
