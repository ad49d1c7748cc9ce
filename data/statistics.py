"""What a dataset holds, counted from its annotation records: images and objects per
class, objects per image, box sizes at the model's input, and the problems the readers
reported, grouped by kind. Torch-free; ``python -m tools.inspect_data`` prints and draws
it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from data.records import AnnotationRecord, ProblemReport


@dataclass
class SplitStatistics:
    """One split's counts. Box sizes are in model-input pixels: the reader's boxes
    scaled by ``image_size`` over the image's width and height, as the resize to the
    square input scales them."""

    name: str
    images: int
    objects: int
    difficult: int
    objects_per_class: dict[str, int]
    images_per_class: dict[str, int]
    objects_per_image: dict[int, int]  # objects in an image -> images with that many
    widths: np.ndarray  # [G] float64
    heights: np.ndarray  # [G] float64
    problems: dict[str, tuple[int, str]]  # kind -> (count, first message)

    @property
    def aspect_ratios(self) -> np.ndarray:
        """Width over height at the model's input, per box."""
        return self.widths / np.maximum(self.heights, 1e-12)


def split_statistics(
    name: str,
    records: Sequence[AnnotationRecord],
    class_names: Sequence[str],
    image_size: int,
    problems: ProblemReport | None = None,
) -> SplitStatistics:
    """Counts of ``records`` (labels ``1..len(class_names)``) and of the problems the
    reader reported while reading them, by kind."""
    objects_per_class = Counter({class_name: 0 for class_name in class_names})
    images_per_class = Counter({class_name: 0 for class_name in class_names})
    per_image: Counter[int] = Counter()
    widths, heights = [], []
    difficult = 0
    for record in records:
        names = [class_names[int(label) - 1] for label in record.labels]
        objects_per_class.update(names)
        images_per_class.update(set(names))
        per_image[record.num_objects] += 1
        difficult += int(record.difficult.sum())
        boxes = record.boxes.astype(np.float64)
        widths.append((boxes[:, 2] - boxes[:, 0]) * image_size / record.width)
        heights.append((boxes[:, 3] - boxes[:, 1]) * image_size / record.height)
    return SplitStatistics(
        name=name,
        images=len(records),
        objects=sum(objects_per_class.values()),
        difficult=difficult,
        objects_per_class=dict(objects_per_class),
        images_per_class=dict(images_per_class),
        objects_per_image=dict(sorted(per_image.items())),
        widths=np.concatenate([np.zeros(0), *widths]),
        heights=np.concatenate([np.zeros(0), *heights]),
        problems=problems.kinds() if problems is not None else {},
    )
