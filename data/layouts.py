"""What a data folder holds, found from its files: a VOCdevkit, a folder of VOC XML
(with or without split lists) or COCO JSON files; its training and validation sets as a
config names them, and the class names the annotations use. tools.make_config writes
a config from it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from data.coco import coco_class_names, load_coco
from data.sources import DataError
from data.voc import (
    annotation_dir,
    annotation_files,
    discover_class_names,
    read_split_ids,
    voc_year_folder,
)

# (training, validation) split-list pairs of a folder of XML, in order of preference.
SPLIT_PAIRS = (("train", "val"), ("trainval", "test"))


def discover_layout(root: Path, data_format: str | None = None) -> DataLayout:
    """The layout of ``root`` (``data_format`` ``voc`` or ``coco`` forces the kind;
    default: found from the files).

    Raises:
        DataError: no annotations, or none that make a training and a validation set.
    """
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    if (data_format or detect_format(root)) == "voc":
        return voc_layout(root)
    return coco_layout(root)


@dataclasses.dataclass
class DataLayout:
    """How a data folder is read: the dataset kind, its sets, the class names found."""

    dataset: str
    train_sets: list[str]
    val_sets: list[str]
    class_names: list[str]
    note: str  # how the sets were found, for the written comments


def _has_xml(root: Path) -> bool:
    return any(root.glob("*.xml")) or any((root / "Annotations").glob("*.xml"))


def devkit_years(root: Path) -> list[str]:
    """Years of the ``VOC<year>`` folders with XML annotations in ``root`` (a VOCdevkit)."""
    return sorted(
        folder.name[3:]
        for folder in root.glob("VOC*")
        if folder.name[3:] and any((folder / "Annotations").glob("*.xml"))
    )


def detect_format(root: Path) -> str:
    if _has_xml(root) or devkit_years(root):
        return "voc"
    if any(root.glob("*.json")) or any((root / "annotations").glob("*.json")):
        return "coco"
    hint = ""
    if (root / "VOCdevkit").is_dir():
        hint = f"; for Pascal VOC pass the VOCdevkit folder: --data {root / 'VOCdevkit'}"
    raise DataError(
        f"{root}: no annotations found: neither VOC XML files (in the folder, in "
        "Annotations/ or in VOC<year>/Annotations/) nor COCO JSON files (in the folder or "
        f"in annotations/){hint}"
    )


def _annotated_list(folder: Path, split: str) -> bool:
    """Whether ``ImageSets/Main/<split>.txt`` exists and its first image has its XML (VOC
    2012's test list comes without annotations)."""
    try:
        ids = read_split_ids(folder, split)
    except FileNotFoundError:
        return False
    return bool(ids) and (annotation_dir(folder) / f"{ids[0]}.xml").is_file()


def devkit_layout(root: Path, years: list[str]) -> DataLayout:
    """A VOCdevkit: every year's ``trainval`` for training and the annotated ``test``
    lists for validation (VOC07+12's protocol), or ``train``/``val`` when no year has an
    annotated test list."""
    folders = {year: root / f"VOC{year}" for year in years}
    tested = [year for year in years if _annotated_list(folders[year], "test")]
    train_split, val_split = ("trainval", "test") if tested else ("train", "val")
    train = [
        f"{year}/{train_split}" for year in years if _annotated_list(folders[year], train_split)
    ]
    val = [f"{year}/{val_split}" for year in years if _annotated_list(folders[year], val_split)]
    if not train or not val:
        raise DataError(
            f"{root}: a VOCdevkit ({', '.join(f'VOC{year}' for year in years)}) without "
            "ImageSets/Main lists for training and validation (trainval.txt and test.txt, "
            "or train.txt and val.txt) whose annotations exist"
        )
    files = [
        path
        for set_name in (*train, *val)
        for path in annotation_files(*voc_year_folder(root, set_name))
        if path.is_file()
    ]
    names = discover_class_names(files)
    if not names:
        raise DataError(f"{root}: the {len(files)} XML files name no objects")
    note = (
        f"the VOCdevkit's split lists: {', '.join(train)} for training, "
        f"{', '.join(val)} for validation"
    )
    return DataLayout("voc", train, val, names, note)


def voc_layout(root: Path) -> DataLayout:
    """A VOCdevkit (``VOC<year>`` folders), else a folder of XML files: splits from
    ``ImageSets/Main`` lists when a train/val pair exists, else ``all``."""
    years = devkit_years(root)
    if years and not _has_xml(root):
        return devkit_layout(root, years)
    for train, val in SPLIT_PAIRS:
        try:
            read_split_ids(root, train), read_split_ids(root, val)
        except FileNotFoundError:
            continue
        sets, note = ([train], [val]), f"from the split lists {train}.txt and {val}.txt"
        break
    else:
        sets = (["all"], ["all"])
        note = (
            "there are no ImageSets/Main/{train,val}.txt split lists, so every annotated image is "
            "used for training and for validation (no held-out images: the validation "
            "mAP is a training-set number; add the two lists for a real one)"
        )
    files = sorted(
        {path for split in (*sets[0], *sets[1]) for path in annotation_files(root, split)}
    )
    if not files:
        raise DataError(f"{root}: no XML annotation files in the folder or in Annotations/")
    names = discover_class_names(files)
    if not names:
        raise DataError(f"{root}: the {len(files)} XML files name no objects")
    return DataLayout("custom", sets[0], sets[1], names, note)


def _image_folder(root: Path, annotation_file: Path, coco: Any) -> Path:
    """The folder under ``root`` holding the images the file names."""
    if not coco.imgs:
        raise DataError(f"{annotation_file}: lists no images")
    file_name = next(iter(coco.imgs.values()))["file_name"]
    for folder in (root / "images", root / annotation_file.stem, root):
        if (folder / file_name).is_file():
            return folder
    depth = len(Path(file_name).parts)
    for path in sorted(root.rglob(Path(file_name).name)):
        folder = Path(*path.parts[: len(path.parts) - depth])
        if (folder / file_name).is_file():
            return folder
    raise DataError(f"{annotation_file}: its images (e.g. {file_name}) are not under {root}")


def coco_layout(root: Path) -> DataLayout:
    """Sets from the JSON files: one named ``*train*`` and one ``*val*`` (or
    ``*test*``), or a single file for both. Where some are named ``instances*`` (COCO's
    boxes), only those count: ``captions_*`` and ``person_keypoints_*`` are other tasks."""
    files = sorted(root.glob("*.json")) + sorted((root / "annotations").glob("*.json"))
    instances = [path for path in files if path.stem.lower().startswith("instances")]
    files = instances or files
    train = [path for path in files if "train" in path.stem.lower()]
    val = sorted(
        (
            path
            for path in files
            if path not in train and ("val" in path.stem.lower() or "test" in path.stem.lower())
        ),
        key=lambda path: "val" not in path.stem.lower(),
    )
    if train and val:
        chosen, note = (
            (train[0], val[0]),
            f"from {train[0].name} for training, {val[0].name} for validation",
        )
    elif len(files) == 1:
        chosen = (files[0], files[0])
        note = (
            f"there is one annotation file, {files[0].name}, for training and for validation (no "
            "held-out images: the validation AP is a training-set number)"
        )
    else:
        raise DataError(
            f"{root}: {len(files)} COCO JSON files and not one named *train* and one "
            f"*val*: {', '.join(path.name for path in files) or 'none'}"
        )
    sets = []
    for annotation_file in chosen:
        try:
            coco = load_coco(annotation_file)
        except (FileNotFoundError, ValueError) as error:
            raise DataError(str(error)) from error
        folder = _image_folder(root, annotation_file, coco)
        relative = (annotation_file.relative_to(root), folder.relative_to(root))
        sets.append(f"{relative[0].as_posix()}:{relative[1].as_posix()}")
    names = coco_class_names(load_coco(chosen[0]))
    if not names:
        raise DataError(f"{chosen[0]}: no categories")
    return DataLayout("coco", [sets[0]], [sets[1]], names, note)
