"""Pascal VOC XML annotations: the VOCdevkit layout, and any folder of VOC-style XML.

The same reader serves three datasets: Pascal VOC (``VOCdevkit/VOC2007`` …), custom data
(a folder of images with one XML each) and the generated shapes dataset.
"""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data.records import (
    IMAGE_EXTENSIONS,
    MIN_BOX_SIDE,
    AnnotationRecord,
    BadSampleError,
    ProblemReport,
    clean_boxes,
    find_image,
    read_image,
)

logger = logging.getLogger(__name__)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip


def read_voc_xml(path: Path) -> dict:
    """The raw content of one VOC XML: file name, size and objects (names, 1-based boxes).

    Raises:
        BadSampleError: the file is not readable XML or a box is not numeric.
    """
    try:
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, OSError) as error:
        raise BadSampleError(f"{path}: not a readable XML annotation ({error})") from error
    objects = []
    for index, element in enumerate(root.iterfind("object")):
        box = element.find("bndbox")
        try:
            coords = [
                float(box.findtext(tag) or "nan") if box is not None else math.nan
                for tag in ("xmin", "ymin", "xmax", "ymax")
            ]
        except ValueError as error:
            raise BadSampleError(f"{path}: object {index} has a non-numeric box") from error
        if any(math.isnan(value) for value in coords):
            raise BadSampleError(f"{path}: object {index} has no complete <bndbox>")
        objects.append(
            {
                "name": (element.findtext("name") or "").strip(),
                "box": coords,
                "difficult": (element.findtext("difficult") or "0").strip() == "1",
            }
        )
    filename = (root.findtext("filename") or "").strip()
    return {
        "filename": filename or None,
        "width": int(float(root.findtext("size/width") or 0)),
        "height": int(float(root.findtext("size/height") or 0)),
        "objects": objects,
    }


def discover_class_names(annotation_files: Sequence[Path]) -> list[str]:
    """Every object name in the files, sorted (unreadable files are left to the reader)."""
    names: set[str] = set()
    for path in annotation_files:
        try:
            names.update(item["name"] for item in read_voc_xml(path)["objects"])
        except BadSampleError:
            continue
    return sorted(name for name in names if name)


def parse_annotation(
    path: Path,
    image_dirs: Sequence[Path],
    class_names: Sequence[str],
    problems: ProblemReport,
    min_box_side: float = MIN_BOX_SIDE,
) -> AnnotationRecord | None:
    """One VOC XML as a record, or ``None`` when the image must be left out.

    Objects of unknown classes, inverted boxes and points (``xmin == xmax`` and ``ymin
    == ymax``: a click, not a box; BCCD has some) are reported and dropped, boxes outside
    the image clipped; an image without usable objects, or whose file cannot be found,
    is reported and left out.
    """
    try:
        content = read_voc_xml(path)
    except BadSampleError as error:
        problems.report(path, str(error).removeprefix(f"{path}: "))
        return None
    image_id = path.stem
    image_path = find_image(image_dirs, content["filename"], image_id)
    if image_path is None:
        searched = ", ".join(str(directory) for directory in image_dirs)
        problems.report(
            path,
            f"image '{content['filename']}' named in the annotation not found, nor any image "
            f"with id '{image_id}' (searched {searched})",
        )
        return None
    width, height = content["width"], content["height"]
    if width <= 0 or height <= 0:
        # No usable <size>: read it from the image itself.
        try:
            height, width = read_image(image_path).shape[:2]
        except BadSampleError:
            problems.report(image_path, "unreadable or corrupt image")
            return None
    label_of = {name: label for label, name in enumerate(class_names, start=1)}
    boxes, labels, difficult, box_names = [], [], [], []
    unknown: dict[str, int] = {}
    for index, item in enumerate(content["objects"]):
        if item["name"] not in label_of:
            unknown[item["name"]] = unknown.get(item["name"], 0) + 1
            continue
        xmin, ymin, xmax, ymax = item["box"]
        if xmin == xmax and ymin == ymax:
            problems.report(
                path,
                f"object {index} ('{item['name']}') is a point ({xmin:g}, {ymin:g}), not a box; "
                "left out",
            )
            continue
        # 1-based inclusive pixels -> 0-based continuous coordinates.
        boxes.append([xmin - 1, ymin - 1, xmax, ymax])
        labels.append(label_of[item["name"]])
        difficult.append(item["difficult"])
        box_names.append(f"object {index}")
    if unknown:
        names = ", ".join(f"'{name}' ({count})" for name, count in sorted(unknown.items()))
        problems.report(
            path,
            f"{sum(unknown.values())} objects of unknown classes {names} left out; known "
            f"classes: {', '.join(class_names)}",
        )
    boxes_array = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    keep = clean_boxes(boxes_array, width, height, str(path), problems, box_names, min_box_side)
    if not keep.any():
        problems.report(path, "no objects to train on; image left out")
        return None
    return AnnotationRecord(
        image_id=image_id,
        image_path=image_path,
        width=width,
        height=height,
        boxes=boxes_array[keep],
        labels=np.asarray(labels, dtype=np.int64)[keep],
        difficult=np.asarray(difficult, dtype=bool)[keep],
        source=str(path),
    )


def read_split_ids(folder: Path, split: str) -> list[str] | None:
    """Ids listed in ``ImageSets/Main/<split>.txt`` (or ``<split>.txt``); ``None`` for
    ``all`` (every annotation file).

    Raises:
        FileNotFoundError: no such list file.
    """
    if split == "all" and not (folder / "ImageSets" / "Main" / "all.txt").is_file():
        return None
    for candidate in (folder / "ImageSets" / "Main" / f"{split}.txt", folder / f"{split}.txt"):
        if candidate.is_file():
            lines = candidate.read_text(encoding="utf-8").split()
            return [line.strip() for line in lines if line.strip()]
    raise FileNotFoundError(
        f"{folder}: no split list ImageSets/Main/{split}.txt (or {split}.txt); "
        "use 'all' for every annotation file"
    )


def annotation_dir(folder: Path) -> Path:
    return folder / "Annotations" if (folder / "Annotations").is_dir() else folder


def image_dirs(folder: Path) -> list[Path]:
    candidates = [folder / "JPEGImages", folder / "images", folder]
    return [directory for directory in candidates if directory.is_dir()]


def annotation_files(folder: Path, split: str) -> list[Path]:
    """The XML files of one split of a VOC-format folder."""
    directory = annotation_dir(folder)
    ids = read_split_ids(folder, split)
    if ids is None:
        return sorted(directory.glob("*.xml"))
    return [directory / f"{image_id}.xml" for image_id in ids]


def read_voc_format(
    folder: Path,
    split: str,
    class_names: Sequence[str],
    problems: ProblemReport,
    min_box_side: float = MIN_BOX_SIDE,
) -> list[AnnotationRecord]:
    """Records of one split of a folder holding VOC-style XML (and the images); boxes
    under ``min_box_side`` pixels are reported and left out.

    Without a split list (``all``: every XML of the folder), images that no XML
    annotates are reported as one problem (their count and first names) and left out.
    """
    records = []
    directories = image_dirs(folder)
    files = annotation_files(folder, split)
    for path in files:
        if not path.is_file():
            problems.report(path, f"annotation file listed in split '{split}' not found")
            continue
        record = parse_annotation(path, directories, class_names, problems, min_box_side)
        if record is not None:
            records.append(record)
    if read_split_ids(folder, split) is None:
        _report_unannotated_images(directories, files, records, folder, problems)
    return records


def _report_unannotated_images(
    directories: Sequence[Path],
    files: Sequence[Path],
    records: Sequence[AnnotationRecord],
    folder: Path,
    problems: ProblemReport,
    shown: int = 5,
) -> None:
    """Report the images of ``directories`` that no annotation file names or shares a
    stem with (an XML found for an image but left out reports its own problem)."""
    annotated = {record.image_path.resolve() for record in records}
    stems = {path.stem for path in files}
    unannotated = sorted(
        {
            path
            for directory in directories
            for path in directory.iterdir()
            if path.suffix.lower() in IMAGE_EXTENSIONS
            and path.resolve() not in annotated
            and path.stem not in stems
        }
    )
    if unannotated:
        names = ", ".join(path.name for path in unannotated[:shown])
        more = f" and {len(unannotated) - shown} more" if len(unannotated) > shown else ""
        problems.report(
            folder,
            f"{len(unannotated)} images have no XML annotation and are left out: {names}{more}",
        )


def voc_year_folder(root: Path, set_name: str) -> tuple[Path, str]:
    """``2007/trainval`` -> (``root/VOC2007``, ``trainval``).

    Raises:
        ValueError: the name is not ``YEAR/SPLIT``.
        FileNotFoundError: the year folder does not exist.
    """
    year, separator, split = set_name.partition("/")
    if not separator or not year or not split:
        raise ValueError(f"VOC set '{set_name}' must look like YEAR/SPLIT, e.g. 2007/trainval")
    folder = root / f"VOC{year}"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: VOC year folder not found (data.root={root})")
    return folder, split
