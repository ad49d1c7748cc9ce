"""The dataset that loads images for annotation records (``data/records.py``) through a
transform, with a reproducible random stream per sample and epoch."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from data.records import AnnotationRecord, BadSampleError, read_image_reduced
from data.transforms import mosaic

logger = logging.getLogger(__name__)

# (image RGB uint8 [H, W, 3], boxes [G, 4] pixels, labels [G], rng) ->
# (image RGB uint8 [S, S, 3], boxes [G', 4] normalised to [0, 1], labels [G'])
Transform = Callable[
    [np.ndarray, np.ndarray, np.ndarray, np.random.Generator],
    tuple[np.ndarray, np.ndarray, np.ndarray],
]


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random stream of one sample in one epoch: independent of workers and order,
    so a resumed run draws the same augmentations."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, index]))


class DetectionDataset(Dataset):
    """Images and boxes from annotation records, through a transform.

    Items are dicts: ``image`` uint8 ``[3, S, S]`` RGB (a view of HWC memory),
    ``boxes`` float32 ``[G, 4]`` normalised xyxy, ``labels`` int64 ``[G]``, ``index``,
    ``image_id``, ``orig_size`` ``(height, width)``. An item key is an index or an
    ``(index, epoch)`` pair (the sampler passes the epoch so augmentation is
    reproducible).

    A sample whose image cannot be read is reported; with ``on_bad_sample="skip"`` the
    item is ``None`` (the collate function drops it), with ``"stop"``
    :class:`BadSampleError` is raised.

    Args:
        records: the annotated images.
        class_names: names of labels 1..C-1 (index 0 is the first non-background class).
        transform: augmentation or plain resize (see :data:`Transform`).
        seed: base seed of the per-sample random streams.
        on_bad_sample: ``skip`` or ``stop``.
        train_difficult: keep objects marked difficult in the targets.
        mosaic_prob: probability that an item is a :func:`data.transforms.mosaic` of
            its image and three others drawn at random, each through ``transform``.
        decode_min_side: decode JPEGs much larger than needed at reduced scale, their
            shorter side kept at this many pixels or more
            (:func:`data.records.read_image_reduced`); None: always at full size.
    """

    def __init__(
        self,
        records: Sequence[AnnotationRecord],
        class_names: Sequence[str],
        transform: Transform,
        *,
        seed: int = 0,
        on_bad_sample: Literal["skip", "stop"] = "skip",
        train_difficult: bool = True,
        mosaic_prob: float = 0.0,
        decode_min_side: int | None = None,
    ) -> None:
        self.records = list(records)
        self.class_names = list(class_names)
        self.transform = transform
        self.seed = seed
        self.on_bad_sample = on_bad_sample
        self.train_difficult = train_difficult
        self.mosaic_prob = mosaic_prob
        self.decode_min_side = decode_min_side

    def __len__(self) -> int:
        return len(self.records)

    def unreadable_images(self, workers: int = 2) -> list[tuple[AnnotationRecord, BadSampleError]]:
        """What reading every image as training does (the same decoder, the same
        reduced scale) finds wrong: missing, zero-byte, corrupt or truncated files, in
        record order. Decodes every image once."""

        def check(record: AnnotationRecord) -> BadSampleError | None:
            try:
                read_image_reduced(record.image_path, min_side=self.decode_min_side)
            except BadSampleError as error:
                return error
            return None

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            found = list(pool.map(check, self.records))
        return [
            (record, error)
            for record, error in zip(self.records, found, strict=True)
            if error is not None
        ]

    def _load(
        self, index: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]] | None:
        """Record ``index`` through the transform, and its decoded size; None for an
        unreadable image that is skipped."""
        record = self.records[index]
        try:
            image, (height, width) = read_image_reduced(
                record.image_path, min_side=self.decode_min_side
            )
        except BadSampleError:
            if self.on_bad_sample == "stop":
                raise
            logger.warning("%s: unreadable or corrupt image (skipped)", record.image_path)
            return None
        boxes, labels = record.boxes, record.labels
        if not self.train_difficult:
            keep = ~record.difficult
            boxes, labels = boxes[keep], labels[keep]
        if image.shape[:2] != (height, width):  # decoded at reduced scale
            scale = [image.shape[1] / width, image.shape[0] / height] * 2
            boxes = boxes * np.array(scale, dtype=np.float32)
        image, boxes, labels = self.transform(image, boxes.copy(), labels.copy(), rng)
        return image, boxes, labels, (int(height), int(width))

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any] | None:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        record = self.records[index]
        rng = sample_rng(self.seed, epoch, index)
        # Drawn only when mosaics are on, so that without them the stream is unchanged.
        make_mosaic = self.mosaic_prob > 0 and rng.random() < self.mosaic_prob
        loaded = self._load(index, rng)
        if loaded is None:
            return None
        image, boxes, labels, (height, width) = loaded
        if make_mosaic:
            partners = [self._load(int(i), rng) for i in rng.integers(len(self), size=3)]
            # An unreadable partner (skipped) leaves the image on its own.
            if all(partner is not None for partner in partners):
                tiles = [(image, boxes, labels)] + [partner[:3] for partner in partners]
                image, boxes, labels = mosaic(tiles, rng)
        return {
            # [3, S, S] over the image's HWC memory (collate stacks NHWC batches).
            "image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1),
            "boxes": torch.from_numpy(boxes.astype(np.float32)).reshape(-1, 4),
            "labels": torch.from_numpy(labels.astype(np.int64)),
            "index": index,
            "image_id": record.image_id,
            # The decoded image's size, which wins over the size the annotation states.
            "orig_size": (height, width),
        }
