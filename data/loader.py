"""Datasets and loaders from the config: transforms (``augment``), datasets, samplers, batches."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

import cv2
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from data.dataset import DetectionDataset, Transform
from data.records import AnnotationRecord
from data.sources import DataError, read_records
from data.transforms import EvalTransform, SSDAugmentation
from layers.matching import pad_targets
from utils.config import Config
from utils.device import available_cores


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


def build_dataset(
    config: Config,
    split: str,
    class_names: list[str],
    records: list[AnnotationRecord] | None = None,
) -> DetectionDataset:
    """The ``train`` (augmented) or ``val`` (resized only) dataset, of ``records`` when
    they were read already."""
    train = split == "train"
    return DetectionDataset(
        read_records(config, split, class_names) if records is None else records,
        class_names,
        build_transform(config, train),
        seed=config.train.seed,
        on_bad_sample=config.data.on_bad_sample,
        train_difficult=config.data.train_difficult if train else True,
        mosaic_prob=config.augment.mosaic_prob if train else 0.0,
        # Twice the input: crops down to half the image keep full detail.
        decode_min_side=2 * config.model.image_size,
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
    """Stack images (``[B, 3, S, S]`` uint8 in NHWC memory, as the decoder wrote them and
    as channels-last networks read them: no layout conversion on the way) and the
    targets, padded (``targets``: boxes ``[B, G, 4]``, labels ``[B, G]`` with 0 as
    padding; :func:`layers.matching.pad_targets`), one copy to the device a batch.
    Samples that could not be read (``None``) are dropped."""
    items = [item for item in batch if item is not None]
    if not items:
        return {"images": torch.zeros(0, 3, 1, 1, dtype=torch.uint8),
                "targets": pad_targets([], []), "indices": [], "image_ids": [],
                "orig_sizes": []}  # fmt: skip
    return {
        "images": torch.stack([item["image"].permute(1, 2, 0) for item in items]).permute(
            0, 3, 1, 2
        ),
        "targets": pad_targets(
            [item["boxes"] for item in items], [item["labels"] for item in items]
        ),
        "indices": [item["index"] for item in items],
        "image_ids": [item["image_id"] for item in items],
        "orig_sizes": [item["orig_size"] for item in items],
    }


def resolve_num_workers(setting: int | str) -> int:
    """``data.num_workers``: a number as it is; ``auto``: the cores available to this
    process, shared by the training processes on this machine (torchrun's
    ``LOCAL_WORLD_SIZE``), less one for the training process itself; at least 1."""
    if setting != "auto":
        return int(setting)
    processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, available_cores() // processes - 1)


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
    workers = resolve_num_workers(config.data.num_workers)
    _prepare_for_workers(workers)
    # Workers persist across epochs: the epoch travels in each sample key.
    loader = DataLoader(
        dataset,
        batch_size=per_rank,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        drop_last=True,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
    )
    return loader, sampler


def iterations_per_epoch(dataset_size: int, batch_size: int, num_replicas: int = 1) -> int:
    per_rank = batch_size // num_replicas
    return math.ceil(dataset_size / num_replicas) // per_rank


class ShardBatches(Sampler[list[int]]):
    """Rank ``rank``'s share of the evaluation batches: the batches one process would
    run (consecutive images, ``batch_size`` each, the last one shorter), every
    ``world_size``-th from batch ``rank``. Each batch is the single-process batch, so
    each rank's detections are those one process computes for those images."""

    def __init__(self, size: int, batch_size: int, rank: int, world_size: int) -> None:
        self.size = size
        self.batch_size = batch_size
        self.batches = range(rank, math.ceil(size / batch_size), world_size)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            start = batch * self.batch_size
            yield list(range(start, min(start + self.batch_size, self.size)))

    def __len__(self) -> int:
        return len(self.batches)


def build_eval_loader(
    dataset: DetectionDataset, config: Config, *, rank: int = 0, world_size: int = 1
) -> DataLoader:
    """Batches of ``eval.batch_size`` in dataset order; with ``world_size`` > 1, rank
    ``rank``'s share (:class:`ShardBatches`)."""
    workers = resolve_num_workers(config.data.num_workers)
    _prepare_for_workers(workers)
    return DataLoader(
        dataset,
        batch_sampler=ShardBatches(len(dataset), config.eval.batch_size, rank, world_size),
        num_workers=workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
    )
