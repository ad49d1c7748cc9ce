"""Which images and boxes a config names: the class names, the annotation records of the
train or val sets, the COCO annotation file to score against. Torch-free, so evaluating
results files (``test.py --eval-only``) starts without loading torch."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from data.coco import coco_class_names, coco_set_paths, load_coco, read_coco
from data.records import AnnotationRecord, ProblemReport
from data.shapes import SHAPE_CLASSES, ensure_shapes_dataset
from data.voc import (
    VOC_CLASSES,
    annotation_files,
    discover_class_names,
    read_voc_format,
    voc_year_folder,
)
from utils.config import Config
from utils.errors import UserError

logger = logging.getLogger(__name__)


class DataError(UserError, RuntimeError):
    """A dataset that cannot be read as configured; the message says what to change."""


@dataclass(frozen=True)
class SetFiles:
    """One set a config names (``data.train_sets`` / ``data.val_sets``), resolved to its
    files: a VOC-format set (``folder`` with ``Annotations/``, ``JPEGImages/`` and the
    ``ImageSets/Main/<split>.txt`` list, or ``all``) or a COCO one (``annotation_file``
    and the image ``folder``)."""

    name: str
    folder: Path
    split: str | None = None
    annotation_file: Path | None = None

    @property
    def is_coco(self) -> bool:
        return self.annotation_file is not None


def resolve_set(config: Config, set_name: str) -> SetFiles:
    """Where the set ``set_name`` of the config's dataset lives: the one place that maps
    a set name to files (VOC ``<year>/<split>`` under a VOCdevkit, COCO
    ``<annotation file>[:<image folder>]``, a split list of a custom or shapes folder).

    Raises:
        DataError: the VOC year folder or the COCO annotation file is not there.
    """
    data = config.data
    root = Path(data.root)
    try:
        if data.dataset == "voc":
            folder, split = voc_year_folder(root, set_name)
            return SetFiles(set_name, folder, split=split)
        if data.dataset == "coco":
            annotation_file, image_dir = coco_set_paths(root, set_name)
            return SetFiles(set_name, image_dir, annotation_file=annotation_file)
    except (FileNotFoundError, ValueError) as error:
        raise DataError(str(error)) from error
    return SetFiles(set_name, root, split=set_name)


def prepare_data(config: Config) -> None:
    """Generate the shapes dataset if it is the configured one and is missing."""
    data = config.data
    if data.dataset == "shapes":
        try:
            ensure_shapes_dataset(
                data.root,
                num_train=data.shapes_train_images,
                num_val=data.shapes_val_images,
                image_size=data.shapes_image_size,
                seed=data.shapes_seed,
            )
        except ValueError as error:
            raise DataError(str(error)) from error


def resolve_class_names(config: Config) -> list[str]:
    """The class names (labels 1..C-1): the config's, else the dataset's own.

    Raises:
        DataError: they do not fit ``model.num_classes`` (which counts background).
    """
    data = config.data
    root = Path(data.root)
    if data.class_names:
        names = list(data.class_names)
    elif data.dataset == "shapes":
        names = list(SHAPE_CLASSES)
    elif data.dataset == "voc":
        names = list(VOC_CLASSES)
    elif data.dataset == "coco":
        annotation_file = resolve_set(config, data.train_sets[0]).annotation_file
        try:
            names = coco_class_names(load_coco(annotation_file))
        except (FileNotFoundError, ValueError) as error:
            raise DataError(str(error)) from error
    else:
        files = [
            path
            for set_name in [*data.train_sets, *data.val_sets]
            for path in _annotation_files(resolve_set(config, set_name))
        ]
        names = discover_class_names(files)
        if not names:
            raise DataError(f"{root}: no object names found in any annotation file")
        logger.info("classes found in %s: %s", root, ", ".join(names))
    if config.model.num_classes != len(names) + 1:
        raise DataError(
            f"model.num_classes is {config.model.num_classes} but the dataset has "
            f"{len(names)} classes ({', '.join(names[:5])}{', …' if len(names) > 5 else ''}); "
            f"set model.num_classes={len(names) + 1} (background counts as one)"
        )
    return names


def _annotation_files(files: SetFiles) -> list[Path]:
    try:
        return annotation_files(files.folder, files.split)
    except FileNotFoundError as error:
        raise DataError(str(error)) from error


def read_records(
    config: Config, split: str, class_names: list[str], problems: ProblemReport | None = None
) -> list[AnnotationRecord]:
    """All annotation records of the ``train`` or ``val`` sets; the problems found go to
    ``problems`` when given (its policy applies), else to a report under the config's.

    Raises:
        DataError: a set cannot be found or yields no images.
        BadSampleError: a bad sample under ``data.on_bad_sample=stop``.
    """
    data = config.data
    root = Path(data.root)
    sets = data.train_sets if split == "train" else data.val_sets
    if problems is None:
        problems = ProblemReport(data.on_bad_sample)
    records: list[AnnotationRecord] = []
    for set_name in sets:
        files = resolve_set(config, set_name)
        try:
            if files.is_coco:
                records += read_coco(
                    files.annotation_file,
                    files.folder,
                    class_names,
                    problems,
                    keep_empty=split != "train",
                    min_box_side=data.min_box_side,
                )
            else:
                records += read_voc_format(
                    files.folder, files.split, class_names, problems, data.min_box_side
                )
        except (FileNotFoundError, ValueError) as error:
            raise DataError(str(error)) from error
    problems.summarize(f"{data.dataset} {split} sets {sets}")
    if not records:
        raise DataError(f"{root}: the {split} sets {sets} hold no usable images")
    return records


def val_annotation_file(config: Config) -> Path | None:
    """The COCO annotation file of the (first) validation set; None for other datasets."""
    return resolve_set(config, config.data.val_sets[0]).annotation_file
