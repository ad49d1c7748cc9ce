"""VOC devkit results files (``comp4_det_test_<class>.txt``: ``image_id score x1 y1 x2
y2`` per line, 1-based inclusive pixels): written from detections, and read back as
flat arrays by a byte-level parser (one numpy pass over each file, no loop per line)
that names the first bad line of a broken file. Torch-free.

Detections are per image in 0-based continuous pixels; the files hold the devkit's
``x1 + 1, y1 + 1, x2, y2``. Every float32 is written exactly, so scoring the files
equals scoring the arrays.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NoReturn

import numpy as np

from data.records import AnnotationRecord

VOC_RESULTS_PREFIX = "comp4_det_test_"


def to_devkit(boxes: np.ndarray) -> np.ndarray:
    """0-based continuous -> 1-based inclusive pixels."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    boxes[:, :2] += 1.0
    return boxes


def from_devkit(boxes: np.ndarray) -> np.ndarray:
    """1-based inclusive -> 0-based continuous pixels (the inverse of :func:`_to_devkit`)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    boxes[:, :2] -= 1.0
    return boxes


def detections_of_arrays(
    arrays: dict[str, np.ndarray], num_images: int
) -> list[dict[str, np.ndarray]]:
    """The flat arrays of :func:`read_voc_results_arrays` (devkit pixels) as per-image
    detections in 0-based pixels, each image's sorted by descending score."""
    order = np.lexsort((-arrays["scores"], arrays["images"]))
    images = arrays["images"][order]
    boxes, scores, labels = (
        from_devkit(arrays["boxes"][order]),
        arrays["scores"][order],
        arrays["labels"][order],
    )
    bounds = np.searchsorted(images, np.arange(num_images + 1))
    return [
        {
            "boxes": boxes[start:end],
            "scores": scores[start:end],
            "labels": labels[start:end],
        }
        for start, end in itertools.pairwise(bounds)
    ]


def write_voc_results(
    records: Sequence[AnnotationRecord],
    detections: Sequence[dict[str, np.ndarray] | None],
    class_names: Sequence[str],
    directory: Path,
) -> list[Path]:
    """One ``comp4_det_test_<class>.txt`` per class: ``image_id score x1 y1 x2 y2``."""
    directory.mkdir(parents=True, exist_ok=True)
    lines: dict[int, list[str]] = {label: [] for label in range(1, len(class_names) + 1)}
    for record, detection in zip(records, detections, strict=True):
        if detection is None:
            continue
        boxes = to_devkit(detection["boxes"])
        for box, score, label in zip(boxes, detection["scores"], detection["labels"], strict=True):
            lines[int(label)].append(
                # 9 significant digits hold a float32 exactly: scoring the files then
                # equals scoring the arrays.
                f"{record.image_id} {score:.9g} {box[0]:.9g} {box[1]:.9g} {box[2]:.9g} {box[3]:.9g}"
            )
    paths = []
    for label, name in enumerate(class_names, start=1):
        path = directory / f"{VOC_RESULTS_PREFIX}{name}.txt"
        path.write_text("".join(line + "\n" for line in lines[label]), encoding="utf-8")
        paths.append(path)
    return paths


def read_voc_results_arrays(
    directory: Path, records: Sequence[AnnotationRecord], class_names: Sequence[str]
) -> dict[str, np.ndarray]:
    """Every detection of a results directory (devkit pixels) as flat arrays: ``images``
    ``[D]`` (record index), ``scores`` ``[D]``, ``boxes`` ``[D, 4]``, ``labels`` ``[D]``.

    Raises:
        FileNotFoundError: a class has no results file.
        ValueError: a line is malformed or names an image the dataset does not have
            (the message gives the file and line number).
    """
    index_of = {record.image_id: index for index, record in enumerate(records)}
    paths = [directory / f"{VOC_RESULTS_PREFIX}{name}.txt" for name in class_names]
    for path, name in zip(paths, class_names, strict=True):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: results file of class '{name}' not found")
    # The conversion is NumPy work that releases the GIL: threads read files in parallel.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        files = list(pool.map(lambda path: _read_results_file(path, index_of), paths))
    parts: dict[str, list[np.ndarray]] = {"images": [], "scores": [], "boxes": [], "labels": []}
    for label, (images, scores, boxes) in enumerate(files, start=1):
        parts["images"].append(images)
        parts["scores"].append(scores)
        parts["boxes"].append(boxes)
        parts["labels"].append(np.full(images.shape[0], label, dtype=np.int64))
    empty = {"images": np.zeros(0, np.int64), "scores": np.zeros(0),
             "boxes": np.zeros((0, 4)), "labels": np.zeros(0, np.int64)}  # fmt: skip
    return {key: np.concatenate([empty[key], *values]) for key, values in parts.items()}


# ASCII whitespace (space, \t, \n, \v, \f, \r) as a lookup table over byte values.
_IS_SPACE = np.zeros(256, dtype=bool)
_IS_SPACE[[9, 10, 11, 12, 13, 32]] = True
_POWERS_OF_TEN = 10.0 ** np.arange(23)  # exact in float64 up to 1e22


def _read_results_file(
    path: Path, index_of: dict[str, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One devkit results file: ``[D]`` record indices, ``[D]`` scores, ``[D, 4]`` boxes.

    The file is split and converted as one byte array (no Python object per value,
    which for VOC07 test's million detections would cost seconds); only when that
    finds a problem is it read again line by line, to name the first bad line."""
    data = path.read_bytes()
    codes = np.frombuffer(data, dtype=np.uint8)
    in_token = ~_IS_SPACE[codes]
    edges = np.flatnonzero(np.diff(np.concatenate([[False], in_token, [False]])))
    starts, ends = edges[0::2], edges[1::2]  # [T] each
    if starts.size == 0:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 4))
    # \r counts as a line end too (CRLF gives blank lines between, which are allowed).
    line_of_token = np.searchsorted(np.flatnonzero((codes == 10) | (codes == 13)), starts)
    per_line = np.bincount(line_of_token)
    if np.any((per_line != 0) & (per_line != 6)):
        _raise_first_bad_line(path, data, index_of)
    images = _image_indices(codes, starts[0::6], ends[0::6], index_of)
    values, unusual = _parse_decimals(codes, in_token, starts, ends)
    unusual[0::6] = False  # the image ids, read above
    if images is None or not _convert_unusual(data, starts, ends, values, unusual):
        _raise_first_bad_line(path, data, index_of)
    values = values.reshape(-1, 6)
    return images, values[:, 1].copy(), values[:, 2:].copy()


def _image_indices(
    codes: np.ndarray, starts: np.ndarray, ends: np.ndarray, index_of: dict[str, int]
) -> np.ndarray | None:
    """The record index of each image-id token; None if one is not a known id."""
    lengths = ends - starts
    width = int(lengths.max())
    columns = np.arange(width)
    gather = np.minimum(starts[:, None] + columns, codes.size - 1)
    padded = np.where(columns < lengths[:, None], codes[gather], 0).astype(np.uint8)
    ids = np.ascontiguousarray(padded).view(f"S{width}").ravel()  # [D] bytes ids
    unique, inverse = np.unique(ids, return_inverse=True)
    try:
        known = np.array([index_of[value.decode("utf-8")] for value in unique], dtype=np.int64)
    except (KeyError, UnicodeDecodeError):
        return None
    return known[inverse.ravel()]


def _parse_decimals(
    codes: np.ndarray, in_token: np.ndarray, starts: np.ndarray, ends: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The values of the tokens ``codes[starts[i]:ends[i]]`` written ``[+-]digits[.digits]``
    with at most 15 digits, and a mask of the other tokens (exponents, longer numbers,
    anything that is not a number), whose values are left unset. ``in_token`` marks
    the bytes that belong to some token.

    The value is the digits as an integer m over 10^k (k digits after the point): m is
    exact in float64 (below 2^53) and so is 10^k, so the one division rounds the exact
    decimal correctly, which is what ``float()`` returns for the same text."""
    count = starts.size
    marker = np.zeros(codes.size, dtype=np.int32)
    marker[starts] = 1
    token_of = np.cumsum(marker, dtype=np.int32) - 1  # [N] token of each byte
    is_digit = (codes - np.uint8(48)) < 10
    digits_so_far = np.cumsum(is_digit, dtype=np.int32)  # [N] inclusive
    digits_end = digits_so_far[ends - 1]  # [T]
    digits = digits_end - (digits_so_far[starts] - is_digit[starts])

    digit_at = np.flatnonzero(is_digit)
    digit_token = token_of[digit_at]
    place = np.minimum(digits_end[digit_token] - digits_so_far[digit_at], 22)  # digits after
    weights = (codes[digit_at] - np.uint8(48)) * _POWERS_OF_TEN[place]
    mantissa = np.bincount(digit_token, weights=weights, minlength=count)

    point_at = np.flatnonzero(codes == 46)
    point_token = token_of[point_at]
    fraction = np.zeros(count, dtype=np.int32)
    fraction[point_token] = digits_end[point_token] - digits_so_far[point_at]
    values = mantissa / _POWERS_OF_TEN[np.minimum(fraction, 22)]
    values[codes[starts] == 45] *= -1.0

    is_sign = (codes == 45) | (codes == 43)
    unusual = (np.bincount(point_token, minlength=count) > 1) | (digits == 0) | (digits > 15)
    unusual[token_of[np.flatnonzero(in_token & ~is_digit & (codes != 46) & ~is_sign)]] = True
    sign_at = np.flatnonzero(is_sign)
    sign_token = token_of[sign_at]
    unusual[sign_token[sign_at != starts[sign_token]]] = True
    return values, unusual


def _convert_unusual(
    data: bytes, starts: np.ndarray, ends: np.ndarray, values: np.ndarray, unusual: np.ndarray
) -> bool:
    """Fill in the tokens :func:`_parse_decimals` left to ``float()``; False if one is
    not a finite number."""
    try:
        for index in np.flatnonzero(unusual):
            values[index] = _finite(data[starts[index] : ends[index]])
    except ValueError:
        return False
    return True


def _finite(token: bytes | str) -> float:
    """``float(token)``; ValueError for text that is not a number, and for nan and
    infinities (a score or coordinate that would change the AP silently)."""
    value = float(token)
    if not math.isfinite(value):
        text = token.decode("utf-8", "replace") if isinstance(token, bytes) else token
        raise ValueError(f"'{text}' is not a finite number")
    return value


def _raise_first_bad_line(path: Path, data: bytes, index_of: dict[str, int]) -> NoReturn:
    """Raise ValueError naming the first line of the file that is not
    ``image_id score x1 y1 x2 y2`` with a known image id and numeric values."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a UTF-8 text file ({error})") from error
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 6:
            raise ValueError(f"{path}:{number}: expected 'image_id score x1 y1 x2 y2'")
        if parts[0] not in index_of:
            raise ValueError(f"{path}:{number}: image '{parts[0]}' is not in the dataset")
        try:
            [_finite(value) for value in parts[1:]]
        except ValueError as error:
            raise ValueError(f"{path}:{number}: non-numeric value ({error})") from error
    # Only whitespace outside ASCII (which str.split() takes) can bring us here.
    raise ValueError(f"{path}: lines must be 'image_id score x1 y1 x2 y2' split by ASCII spaces")


def voc_results_arrays(
    detections: Sequence[dict[str, np.ndarray] | None],
) -> dict[str, np.ndarray]:
    """Per-image detections (0-based pixels; None for an unreadable image) as the flat
    arrays of :func:`read_voc_results_arrays`, in devkit pixels."""
    present = [(index, item) for index, item in enumerate(detections) if item is not None]
    counts = [len(item["scores"]) for _, item in present]
    return {
        "images": np.repeat(np.array([index for index, _ in present], np.int64), counts),
        "scores": np.concatenate([np.zeros(0), *(item["scores"] for _, item in present)]),
        "boxes": to_devkit(np.concatenate([np.zeros((0, 4)), *(i["boxes"] for _, i in present)])),
        "labels": np.concatenate(
            [np.zeros(0, np.int64), *(item["labels"] for _, item in present)]
        ).astype(np.int64),
    }
