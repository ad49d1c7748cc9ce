"""What every dataset reader produces: annotation records and problem reports.

Readers (VOC, COCO, custom, shapes) parse all annotations up front into
:class:`AnnotationRecord` objects, reporting bad ones through :class:`ProblemReport`.
Boxes are pixels, ``xyxy``, 0-based and continuous: a VOC box over pixels
``xmin..xmax`` (1-based, inclusive) becomes ``[xmin - 1, xmax]``. Nothing here imports
torch, so evaluation without a model (``test.py --eval-only``) starts fast.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from utils.config import DataConfig
from utils.errors import UserError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class BadSampleError(UserError, RuntimeError):
    """A sample that cannot be used; the message names the file and the problem. With
    ``data.on_bad_sample=stop`` a script stops on it with exit code 2."""

    exit_code = 2


@dataclass
class AnnotationRecord:
    """One image and its objects. Boxes ``[G, 4]`` float32 pixels xyxy (0-based)."""

    image_id: str
    image_path: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray  # [G] int64 in 1..C-1
    difficult: np.ndarray  # [G] bool
    source: str  # the annotation file (for messages)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_objects(self) -> int:
        return int(self.labels.shape[0])


class ProblemReport:
    """Collects problems found in a dataset, applying the skip/stop policy.

    ``stop`` raises :class:`BadSampleError` at the first problem; ``skip`` logs each one
    (the first ``max_logged`` in full) and lets the reader leave the object or image out.
    """

    def __init__(self, policy: Literal["skip", "stop"], max_logged: int = 20) -> None:
        self.policy = policy
        self.max_logged = max_logged
        self.entries: list[tuple[str, str]] = []  # (source, problem)

    @property
    def problems(self) -> list[str]:
        """Every problem reported, as ``"SOURCE: problem"``."""
        return [f"{source}: {problem}" for source, problem in self.entries]

    def report(self, source: str | Path, problem: str) -> None:
        """Record ``problem`` (worded as under ``skip``: "...; left out"); under
        ``stop``, raise it worded as what happens then."""
        message = f"{source}: {problem}"
        if self.policy == "stop":
            cause = re.sub(r"[;,]? (image )?left out$|; clipped to .*$| \(skipped\)$", "", problem)
            raise BadSampleError(f"{source}: {cause}; stopped (data.on_bad_sample=stop)")
        self.entries.append((str(source), problem))
        if len(self.entries) <= self.max_logged:
            logger.warning("%s", message)

    def summarize(self, what: str) -> None:
        hidden = len(self.entries) - self.max_logged
        if hidden > 0:
            logger.warning("%s: %d more problems not shown", what, hidden)

    def kinds(self) -> dict[str, tuple[int, str]]:
        """Problems grouped by :func:`problem_kind`, most frequent first: kind ->
        (count, the first full message of that kind)."""
        grouped: dict[str, tuple[int, str]] = {}
        for source, problem in self.entries:
            kind = problem_kind(problem)
            count, example = grouped.get(kind, (0, f"{source}: {problem}"))
            grouped[kind] = (count + 1, example)
        return dict(sorted(grouped.items(), key=lambda item: -item[1][0]))


def problem_kind(problem: str) -> str:
    """A problem without its numbers, bracketed boxes and quoted names, so the same
    problem in many files is one kind: ``"object 3 [1, 2, 0, 5] is inverted or empty; left
    out"`` -> ``"object N [...] is inverted or empty; left out"``."""
    problem = re.sub(r"\[[^\]]*\]", "[...]", problem)
    problem = re.sub(r"'[^']*'( \(\d+\))?(, '[^']*'( \(\d+\))?)*", "'...'", problem)
    problem = re.sub(r"\([^)]*\)", "(...)", problem)
    return re.sub(r"\d+(\.\d+)?", "N", problem)


# data.min_box_side's default, defined once in the config: boxes narrower or lower than
# this, in the image's own pixels, are left out (a VOC box with xmin == xmax is 1 px
# wide: a mark, not an object).
MIN_BOX_SIDE: float = DataConfig.min_box_side


def clean_boxes(
    boxes: np.ndarray,
    width: int,
    height: int,
    source: str,
    problems: ProblemReport,
    box_names: Sequence[str],
    min_side: float = MIN_BOX_SIDE,
) -> np.ndarray:
    """Boolean mask of usable boxes; boxes outside the image are clipped in place.

    Inverted or empty boxes are reported and masked out; boxes reaching outside the
    image are reported and clipped to it; boxes (after clipping) narrower or lower than
    ``min_side`` pixels are reported and masked out. ``box_names`` name each box as its
    file does (``object 3`` of a VOC XML, ``annotation 17`` of a COCO file), so that a
    report points at the right entry when others were dropped before.
    """
    keep = np.ones(len(boxes), dtype=bool)
    for index, (box, name) in enumerate(zip(boxes, box_names, strict=True)):
        x1, y1, x2, y2 = box
        if x2 <= x1 or y2 <= y1:
            problems.report(source, f"{name} {_fmt(box)} is inverted or empty; left out")
            keep[index] = False
            continue
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            clipped = np.array(
                [max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)], dtype=np.float32
            )
            if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
                problems.report(
                    source,
                    f"{name} {_fmt(box)} lies outside the {width}x{height} image; left out",
                )
                keep[index] = False
                continue
            problems.report(
                source,
                f"{name} {_fmt(box)} reaches outside the {width}x{height} image; "
                f"clipped to {_fmt(clipped)}",
            )
            boxes[index] = clipped
        box_width, box_height = boxes[index, 2] - boxes[index, 0], boxes[index, 3] - boxes[index, 1]
        if box_width < min_side or box_height < min_side:
            problems.report(
                source,
                f"{name} {_fmt(boxes[index])} is {box_width:g}x{box_height:g} px, under "
                f"data.min_box_side={min_side:g}; left out",
            )
            keep[index] = False
    return keep


def _fmt(box: np.ndarray) -> str:
    return "[" + ", ".join(f"{value:g}" for value in box) + "]"


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]``.

    Raises:
        BadSampleError: the file is missing, unreadable or not an image.
    """
    return read_image_reduced(path, min_side=None)[0]


# libjpeg decodes at 1/2, 1/4 or 1/8 scale in the DCT, far cheaper than decoding the
# full image and resizing it (a 4000x3000 photo: about 8x).
REDUCED_DECODES = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                   (2, cv2.IMREAD_REDUCED_COLOR_2))  # fmt: skip


def jpeg_size(data: np.ndarray) -> tuple[int, int] | None:
    """``(height, width)`` from a JPEG's frame header (its first SOF marker), without
    decoding; None when ``data`` is not a JPEG or the header cannot be found."""
    raw = data.tobytes()
    if raw[:2] != b"\xff\xd8":
        return None
    position = 2
    while position + 9 < len(raw):
        if raw[position] != 0xFF:
            return None
        marker = raw[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        length = int.from_bytes(raw[position + 2 : position + 4], "big")
        # SOF0-SOF15, except DHT (C4), JPG (C8) and DAC (CC).
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height = int.from_bytes(raw[position + 5 : position + 7], "big")
            width = int.from_bytes(raw[position + 7 : position + 9], "big")
            return height, width
        position += 2 + length
    return None


def read_image_reduced(path: Path, *, min_side: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    """RGB uint8 ``[H, W, 3]`` and the full image's ``(height, width)``: a JPEG whose
    shorter side is at least twice ``min_side`` is decoded at the smallest scale (1/2,
    1/4 or 1/8) that keeps its shorter side at ``min_side`` or more; other images (and
    ``min_side=None``) at full size. Full-size pixel coordinates times the decoded side
    over the full one are coordinates in the returned image (to half a reduced pixel).

    Raises:
        BadSampleError: the file is missing, unreadable or not an image.
    """
    if not path.is_file():
        raise BadSampleError(f"{path}: image file not found")
    data = np.fromfile(path, dtype=np.uint8)
    flag, factor = cv2.IMREAD_COLOR, 1
    size = jpeg_size(data) if min_side is not None and data.size else None
    if size is not None:
        for reduction, reduced_flag in REDUCED_DECODES:
            if min(size) // reduction >= min_side:
                flag, factor = reduced_flag, reduction
                break
    image = cv2.imdecode(data, flag) if data.size else None
    if image is None:
        raise BadSampleError(f"{path}: unreadable or corrupt image")
    full = image.shape[:2]
    if factor > 1:
        # The header's sides, turned as the decoder turned the image (EXIF orientation).
        turned = (image.shape[0] >= image.shape[1]) != (size[0] >= size[1])
        full = size[::-1] if turned else size
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), (int(full[0]), int(full[1]))


def find_image(directories: Sequence[Path], file_name: str | None, image_id: str) -> Path | None:
    """The image an annotation names, else one whose stem is the annotation's id."""
    if file_name:
        for directory in directories:
            candidate = directory / file_name
            if candidate.is_file():
                return candidate
    for directory in directories:
        for extension in IMAGE_EXTENSIONS:
            for candidate in (
                directory / f"{image_id}{extension}",
                directory / f"{image_id}{extension.upper()}",
            ):
                if candidate.is_file():
                    return candidate
    return None
