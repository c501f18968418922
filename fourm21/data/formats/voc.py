"""Pascal VOC: ``Annotations/<id>.xml`` (boxes), ``JPEGImages/``, ``ImageSets/Main/{train,val,test}.txt``,
and, when present, the segmentation PNGs ``SegmentationObject/<id>.png`` (pixel k = the k-th object of the
XML, 255 = void) and ``SegmentationClass/<id>.png`` (pixel = VOC class index).

VOC's 1-based inclusive pixel corners become COCO's 0-based boxes (``xmin - 1``, ``ymin - 1``, as
detectron2 reads VOC). The class names are the 20 VOC classes in VOC's order when every name found is
one of them (so SegmentationClass indices stay valid), else the names found, sorted. ``difficult``
objects: ``keep`` (as detectron2 trains), ``crowd`` (ignored by the loss and by COCOeval, as VOC's
evaluation ignores them) or ``drop``. Without ImageSets every image is in ``train``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fourm21.data.formats.records import (
    ImageRecord,
    Instance,
    Source,
    box_instance,
    box_polygon,
    image_size,
    mask_instance,
)
from fourm21.errors import BadImageError, ConfigError, DatasetError

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
SPLITS = ("train", "val", "test")
DIFFICULT = ("keep", "crowd", "drop")
VOID = 255


@dataclass
class _Object:
    name: str
    difficult: bool
    box: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax as written (1-based, inclusive)


@dataclass
class _Annotation:
    xml: Path
    filename: str
    size: tuple[int, int] | None  # (height, width) from <size>, None when absent or 0
    objects: list[_Object]


def voc_root(src: Path) -> Path:
    """The folder holding ``Annotations/``: ``src`` itself, or its one ``VOC*`` (or ``VOCdevkit/VOC*``) folder."""
    if (src / "Annotations").is_dir():
        return src
    found = sorted(p for p in [*src.glob("VOC*"), *src.glob("VOCdevkit/VOC*")] if (p / "Annotations").is_dir())
    if len(found) == 1:
        return found[0]
    if not found:
        raise DatasetError(f"{src}: no Annotations/ folder (the VOC layout: Annotations/, JPEGImages/, ImageSets/)")
    raise DatasetError(f"{src}: several VOC folders ({', '.join(p.name for p in found)}); name one, src=PATH")


def split_ids(root: Path, image_sets: str) -> dict[str, list[str]]:
    """{split: image ids} from ``ImageSets/<image_sets>/<split>.txt`` (``trainval`` as train when alone);
    without those files, every annotation in ``train``."""
    sets = root / "ImageSets" / image_sets
    files = {s: sets / f"{s}.txt" for s in SPLITS if (sets / f"{s}.txt").is_file()}
    if "train" not in files and (sets / "trainval.txt").is_file():
        files["train"] = sets / "trainval.txt"
    if files:
        return {s: [ln.split()[0] for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]
                for s, f in files.items()}
    if image_sets != "Main":
        raise DatasetError(f"{sets}: no train.txt / val.txt / test.txt (voc.image_sets={image_sets})")
    return {"train": sorted(p.stem for p in (root / "Annotations").glob("*.xml"))}


def _text(node: ET.Element, tag: str, xml: Path, what: str) -> str:
    found = node.find(tag)
    if found is None or found.text is None or not found.text.strip():
        raise DatasetError(f"{xml}: {what} has no <{tag}>")
    return found.text.strip()


def _number(node: ET.Element, tag: str, xml: Path, what: str) -> float:
    text = _text(node, tag, xml, what)
    try:
        return float(text)
    except ValueError:
        raise DatasetError(f"{xml}: {what} <{tag}> is not a number: {text!r}") from None


def parse_xml(xml: Path) -> _Annotation:
    """One annotation file; a DatasetError naming it when it is not VOC XML."""
    if not xml.is_file():
        raise DatasetError(f"{xml}: annotation file not found (listed in ImageSets)")
    try:
        top = ET.parse(xml).getroot()
    except ET.ParseError as e:
        raise DatasetError(f"{xml}: not valid XML ({e})") from None
    if top.tag != "annotation":
        raise DatasetError(f"{xml}: the root element is <{top.tag}>, a VOC file has <annotation>")
    filename = top.findtext("filename", "").strip() or f"{xml.stem}.jpg"
    size = None
    node = top.find("size")
    if node is not None and node.findtext("width") and node.findtext("height"):
        h, w = int(_number(node, "height", xml, "<size>")), int(_number(node, "width", xml, "<size>"))
        size = (h, w) if h > 0 and w > 0 else None
    objects = []
    for i, obj in enumerate(top.findall("object")):
        what = f"object {i}"
        name = _text(obj, "name", xml, what)
        bnd = obj.find("bndbox")
        if bnd is None:
            raise DatasetError(f"{xml}: {what} ({name}) has no <bndbox>")
        box = tuple(_number(bnd, t, xml, f"{what} ({name})") for t in ("xmin", "ymin", "xmax", "ymax"))
        objects.append(_Object(name, obj.findtext("difficult", "0").strip() == "1", box))
    return _Annotation(xml, filename, size, objects)


def _image_file(root: Path, ann: _Annotation) -> Path:
    path = root / "JPEGImages" / ann.filename
    if path.is_file():
        return path
    for suffix in (".jpg", ".jpeg", ".png"):  # <filename> wrong or without its extension
        alt = root / "JPEGImages" / f"{ann.xml.stem}{suffix}"
        if alt.is_file():
            return alt
    return path


def _object_masks(png: Path, n: int, size: tuple[int, int]) -> list[np.ndarray | None]:
    """Per XML object, its mask from a SegmentationObject PNG (None where it has no pixels)."""
    try:
        with Image.open(png) as im:
            index = np.asarray(im)
    except OSError as e:
        raise DatasetError(f"{png}: cannot read the segmentation PNG ({str(e).splitlines()[0]})") from None
    if index.shape != size:
        raise DatasetError(f"{png}: is {index.shape[1]}x{index.shape[0]} but its image is {size[1]}x{size[0]}")
    return [m if (m := index == k + 1).any() else None for k in range(n)]


def _instance(obj: _Object, cat: int, mask: np.ndarray | None, crowd: int) -> Instance:
    xmin, ymin, xmax, ymax = obj.box
    inst = None if mask is None else mask_instance(cat, mask, crowd)
    if inst is not None:
        return inst
    inst = box_instance(cat, xmin - 1, ymin - 1, xmax, ymax, crowd)
    if crowd:  # a crowd region needs a mask: its box
        inst.segmentation = [box_polygon(inst.bbox)]
    return inst


def read_voc(src: Path, names: list[str] | None = None, on_bad_image: str = "error", image_sets: str = "Main",
             difficult: str = "keep") -> Source:
    """Read a VOC folder (``VOCdevkit``, ``VOCdevkit/VOC2012`` or any folder with ``Annotations/``)."""
    if difficult not in DIFFICULT:
        raise ConfigError(f"voc.difficult: must be one of {list(DIFFICULT)}, got {difficult!r}")
    root = voc_root(src)
    parsed = {s: [parse_xml(root / "Annotations" / f"{i}.xml") for i in ids] for s, ids in
              split_ids(root, image_sets).items()}
    found = {o.name for anns in parsed.values() for a in anns for o in a.objects}
    if names is None:
        names = list(VOC_CLASSES) if found <= set(VOC_CLASSES) else sorted(found)
    cat_of = {n: i + 1 for i, n in enumerate(names)}
    source = Source([(i + 1, n) for i, n in enumerate(names)], {})
    voc_names = set(names) <= set(VOC_CLASSES)
    if voc_names:  # VOC index v (1..20) -> our category id; 0 background, the rest void
        lut = np.full(256, VOID, dtype=np.uint8)
        lut[0] = 0
        for v, n in enumerate(VOC_CLASSES, 1):
            lut[v] = cat_of.get(n, VOID)
        source.semantic_lut = lut
    for split, anns in parsed.items():
        records = []
        for ann in anns:
            path = _image_file(root, ann)
            try:
                size = image_size(path)
            except BadImageError as e:
                if on_bad_image != "skip":
                    raise BadImageError(f"{e} (the image of {ann.xml})", path=e.path, reason=e.reason) from None
                source.skipped[str(path)] = e.reason
                continue
            if ann.size is not None and ann.size != size:
                raise DatasetError(f"{ann.xml}: <size> says {ann.size[1]}x{ann.size[0]} but {path} is "
                                   f"{size[1]}x{size[0]} (EXIF rotation, or a replaced image?)")
            unknown = [o.name for o in ann.objects if o.name not in cat_of]
            if unknown:
                raise DatasetError(f"{ann.xml}: class {unknown[0]!r} is not in names {names}")
            png = root / "SegmentationObject" / f"{ann.xml.stem}.png"
            masks = _object_masks(png, len(ann.objects), size) if png.is_file() else [None] * len(ann.objects)
            instances = []
            for obj, mask in zip(ann.objects, masks):
                if obj.difficult and difficult == "drop":
                    source.notes["difficult objects dropped (voc.difficult=drop)"] += 1
                    continue
                crowd = int(obj.difficult and difficult == "crowd")
                instances.append(_instance(obj, cat_of[obj.name], mask, crowd))
            sem = root / "SegmentationClass" / f"{ann.xml.stem}.png"
            if sem.is_file() and voc_names and image_size(sem) != size:
                raise DatasetError(f"{sem}: is not the size of its image {path} ({size[1]}x{size[0]})")
            records.append(ImageRecord(path.name, size[0], size[1], path, instances=instances,
                                       semantic=sem if sem.is_file() and voc_names else None))
        source.splits[split] = records
    return source
