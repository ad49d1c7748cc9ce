"""COCO-format annotations through pycocotools, with contiguous labels."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from data.records import MIN_BOX_SIDE, AnnotationRecord, ProblemReport, clean_boxes
from utils.boxes import xywh_to_xyxy

logger = logging.getLogger(__name__)


def coco_set_paths(root: Path, set_name: str) -> tuple[Path, Path]:
    """(annotation JSON, image folder) of a set: ``SPLIT`` or ``JSON:IMAGE_DIR``."""
    if ":" in set_name:
        annotations, images = set_name.split(":", 1)
        return root / annotations, root / images
    return root / "annotations" / f"instances_{set_name}.json", root / set_name


def load_coco(annotation_file: Path) -> COCO:
    """pycocotools' index of a file, without its progress prints.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: the file is not COCO JSON.
    """
    if not annotation_file.is_file():
        raise FileNotFoundError(f"{annotation_file}: COCO annotation file not found")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(annotation_file))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{annotation_file}: not a COCO annotation file ({error})") from error


def coco_class_names(coco: COCO) -> list[str]:
    """Category names ordered by category id: label k is the k-th (1-based) of them."""
    return [coco.cats[category_id]["name"] for category_id in sorted(coco.cats)]


def read_coco(
    annotation_file: Path,
    image_dir: Path,
    class_names: Sequence[str],
    problems: ProblemReport,
    *,
    keep_empty: bool,
    min_box_side: float = MIN_BOX_SIDE,
) -> list[AnnotationRecord]:
    """Records of a COCO file. Labels follow ``class_names`` (matched by category name).

    Crowd boxes are left out of the targets (COCO AP reads them from the annotation
    file itself, where COCOeval ignores detections on them). Images
    without annotations are kept when ``keep_empty`` (evaluation) and left out otherwise.
    Each record carries its COCO image id in ``extra["coco_id"]``. An image whose file
    is not in ``image_dir`` is reported and left out, as the VOC reader does.
    """
    coco = load_coco(annotation_file)
    label_of_name = {name: label for label, name in enumerate(class_names, start=1)}
    label_of_category = {}
    for category_id, category in coco.cats.items():
        if category["name"] not in label_of_name:
            problems.report(
                annotation_file,
                f"category '{category['name']}' is not among the classes; its boxes are left out",
            )
            continue
        label_of_category[category_id] = label_of_name[category["name"]]
    records, empty = [], 0
    for image_id in sorted(coco.imgs):
        info = coco.imgs[image_id]
        width, height = int(info["width"]), int(info["height"])
        source = f"{annotation_file} (image {image_id}, {info['file_name']})"
        image_path = image_dir / info["file_name"]
        if not image_path.is_file():
            problems.report(source, f"image file {image_path} not found; image left out")
            continue
        boxes, labels, box_names = [], [], []
        for annotation in coco.imgToAnns.get(image_id, []):
            if annotation.get("iscrowd", 0) or annotation["category_id"] not in label_of_category:
                continue
            boxes.append(annotation["bbox"])
            labels.append(label_of_category[annotation["category_id"]])
            box_names.append(f"annotation {annotation['id']}")
        boxes_array = xywh_to_xyxy(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))
        boxes_array = boxes_array.astype(np.float32)
        keep = clean_boxes(boxes_array, width, height, source, problems, box_names, min_box_side)
        if not keep.any() and not keep_empty:
            empty += 1
            continue
        records.append(
            AnnotationRecord(
                image_id=str(image_id),
                image_path=image_path,
                width=width,
                height=height,
                boxes=boxes_array[keep],
                labels=np.asarray(labels, dtype=np.int64)[keep],
                difficult=np.zeros(int(keep.sum()), dtype=bool),
                source=source,
                extra={"coco_id": image_id},
            )
        )
    if empty:
        logger.info(
            "%s: %d images without annotations left out of training", annotation_file, empty
        )
    return records
