"""Datasets and loaders from the config: the one place that reads ``data`` and ``augment``."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import torch
from torch.utils.data import DataLoader, DistributedSampler

from data.coco import coco_class_names, coco_set_paths, load_coco, read_coco
from data.dataset import AnnotationRecord, DetectionDataset, ProblemReport, Transform
from data.shapes import SHAPE_CLASSES, ensure_shapes_dataset
from data.transforms import EvalTransform, SSDAugmentation
from data.voc import (
    VOC_CLASSES,
    annotation_files,
    discover_class_names,
    read_voc_format,
    voc_year_folder,
)
from utils.config import Config

logger = logging.getLogger(__name__)


class DataError(RuntimeError):
    """A dataset that cannot be read as configured; the message says what to change."""


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
        annotation_file, _ = coco_set_paths(root, data.train_sets[0])
        try:
            names = coco_class_names(load_coco(annotation_file))
        except (FileNotFoundError, ValueError) as error:
            raise DataError(str(error)) from error
    else:
        files = [
            path
            for split in [*data.train_sets, *data.val_sets]
            for path in _custom_annotation_files(root, split)
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


def _custom_annotation_files(root: Path, split: str) -> list[Path]:
    try:
        return annotation_files(root, split)
    except FileNotFoundError as error:
        raise DataError(str(error)) from error


def read_records(config: Config, split: str, class_names: list[str]) -> list[AnnotationRecord]:
    """All annotation records of the ``train`` or ``val`` sets.

    Raises:
        DataError: a set cannot be found or yields no images.
        BadSampleError: a bad sample under ``data.on_bad_sample=stop``.
    """
    data = config.data
    root = Path(data.root)
    sets = data.train_sets if split == "train" else data.val_sets
    problems = ProblemReport(data.on_bad_sample)
    records: list[AnnotationRecord] = []
    for set_name in sets:
        try:
            if data.dataset == "voc":
                folder, voc_split = voc_year_folder(root, set_name)
                records += read_voc_format(folder, voc_split, class_names, problems)
            elif data.dataset == "coco":
                annotation_file, image_dir = coco_set_paths(root, set_name)
                records += read_coco(
                    annotation_file, image_dir, class_names, problems, keep_empty=split != "train"
                )
            else:
                records += read_voc_format(root, set_name, class_names, problems)
        except (FileNotFoundError, ValueError) as error:
            raise DataError(str(error)) from error
    problems.summarize(f"{data.dataset} {split} sets {sets}")
    if not records:
        raise DataError(f"{root}: the {split} sets {sets} hold no usable images")
    return records


def val_annotation_file(config: Config) -> Path | None:
    """The COCO annotation file of the (first) validation set; None for other datasets."""
    if config.data.dataset != "coco":
        return None
    annotation_file, _ = coco_set_paths(Path(config.data.root), config.data.val_sets[0])
    return annotation_file


def build_transform(config: Config, train: bool) -> Transform:
    size = config.model.image_size
    if not train:
        return EvalTransform(size)
    augment = config.augment
    return SSDAugmentation(
        size=size,
        photometric_prob=augment.photometric_prob,
        brightness_delta=augment.brightness_delta,
        contrast_range=augment.contrast_range,
        saturation_range=augment.saturation_range,
        hue_delta=augment.hue_delta,
        expand_prob=augment.expand_prob,
        expand_max_ratio=augment.expand_max_ratio,
        crop_prob=augment.crop_prob,
        crop_min_ious=augment.crop_min_ious,
        crop_scale=augment.crop_scale,
        crop_aspect_ratio=augment.crop_aspect_ratio,
        flip_prob=augment.flip_prob,
    )


def build_dataset(config: Config, split: str, class_names: list[str]) -> DetectionDataset:
    """The ``train`` (augmented) or ``val`` (resized only) dataset."""
    train = split == "train"
    return DetectionDataset(
        read_records(config, split, class_names),
        class_names,
        build_transform(config, train),
        seed=config.train.seed,
        on_bad_sample=config.data.on_bad_sample,
        train_difficult=config.data.train_difficult if train else True,
    )


class ResumableSampler(DistributedSampler):
    """DistributedSampler that yields ``(index, epoch)`` keys and can start mid-epoch.

    The epoch in each key seeds that sample's augmentation; ``start_at`` skips the
    samples of this rank already consumed, so a resumed run sees the rest of the epoch
    in the same order. Without a process group it acts on one replica.
    """

    def __init__(
        self, dataset: DetectionDataset, *, num_replicas: int, rank: int, seed: int
    ) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False
        )
        self.start = 0

    def start_at(self, position: int) -> None:
        """Skip the first ``position`` samples of this rank in the current epoch."""
        self.start = position

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        indices = list(super().__iter__())[self.start :]
        self.start = 0
        return iter([(index, self.epoch) for index in indices])

    def __len__(self) -> int:
        return self.num_samples - self.start


def collate(batch: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Stack images (``[B, 3, S, S]`` uint8); keep per-image targets as lists. Samples
    that could not be read (``None``) are dropped."""
    items = [item for item in batch if item is not None]
    if not items:
        return {"images": torch.zeros(0, 3, 1, 1, dtype=torch.uint8), "boxes": [], "labels": [],
                "indices": [], "image_ids": [], "orig_sizes": []}  # fmt: skip
    return {
        "images": torch.stack([item["image"] for item in items]),
        "boxes": [item["boxes"] for item in items],
        "labels": [item["labels"] for item in items],
        "indices": [item["index"] for item in items],
        "image_ids": [item["image_id"] for item in items],
        "orig_sizes": [item["orig_size"] for item in items],
    }


def _prepare_for_workers(num_workers: int) -> None:
    """Make OpenCV single-threaded before workers fork: a forked child that touches a
    thread pool its parent started (even to resize it) can deadlock. The workers are
    the parallelism; the main process keeps its cores for the model."""
    if num_workers > 0:
        cv2.setNumThreads(0)


def build_train_loader(
    dataset: DetectionDataset,
    config: Config,
    *,
    num_replicas: int = 1,
    rank: int = 0,
) -> tuple[DataLoader, ResumableSampler]:
    """Loader of per-rank batches of ``train.batch_size / num_replicas`` images; the
    last incomplete batch is dropped (BatchNorm needs more than one image)."""
    if config.train.batch_size % num_replicas:
        raise DataError(
            f"train.batch_size={config.train.batch_size} does not split over "
            f"{num_replicas} processes"
        )
    per_rank = config.train.batch_size // num_replicas
    sampler = ResumableSampler(
        dataset, num_replicas=num_replicas, rank=rank, seed=config.train.seed
    )
    if sampler.num_samples < per_rank:
        raise DataError(
            f"{len(dataset)} training images give {sampler.num_samples} per process, fewer "
            f"than one batch of {per_rank}"
        )
    _prepare_for_workers(config.data.num_workers)
    # Workers persist across epochs: the epoch travels in each sample key.
    loader = DataLoader(
        dataset,
        batch_size=per_rank,
        sampler=sampler,
        num_workers=config.data.num_workers,
        collate_fn=collate,
        drop_last=True,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=config.data.num_workers > 0,
    )
    return loader, sampler


def iterations_per_epoch(dataset_size: int, batch_size: int, num_replicas: int = 1) -> int:
    per_rank = batch_size // num_replicas
    return math.ceil(dataset_size / num_replicas) // per_rank


def build_eval_loader(dataset: DetectionDataset, config: Config) -> DataLoader:
    _prepare_for_workers(config.data.num_workers)
    return DataLoader(
        dataset,
        batch_size=config.eval.batch_size,
        shuffle=False,
        num_workers=config.data.num_workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=config.data.num_workers > 0,
    )
