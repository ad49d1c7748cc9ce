"""Evaluation: the metric dispatch (:class:`Evaluator`), results files (VOC devkit comp4,
COCO results JSON), metrics.json and the precision/recall figure.

Detections arrive per image in 0-based continuous pixels (what
:func:`engine.inference.predict` returns). VOC scoring uses the devkit's 1-based
inclusive pixels (``x1 + 1, y1 + 1, x2, y2``) and its ``+1`` rule, for files and for
arrays alike; the files hold every float32 exactly, so scoring the files equals scoring
the arrays, and training-time evaluation reports what ``test.py`` reports.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NoReturn

import cv2
import numpy as np

from data.records import AnnotationRecord
from data.sources import val_annotation_file
from utils.config import METRICS, Config, ConfigError
from utils.metrics import ClassResult, evaluate_voc_arrays
from utils.visualize import draw_pr_curves

VOC_RESULTS_PREFIX = "comp4_det_test_"
COCO_RESULTS_FILE = "detections_coco.json"
COCO_STAT_NAMES = (
    "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
)  # fmt: skip


def _to_devkit(boxes: np.ndarray) -> np.ndarray:
    """0-based continuous -> 1-based inclusive pixels."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    boxes[:, :2] += 1.0
    return boxes


def _from_devkit(boxes: np.ndarray) -> np.ndarray:
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
        _from_devkit(arrays["boxes"][order]),
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
        boxes = _to_devkit(detection["boxes"])
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
    not a number."""
    try:
        for index in np.flatnonzero(unusual):
            values[index] = float(data[starts[index] : ends[index]])
    except ValueError:
        return False
    return True


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
            [float(value) for value in parts[1:]]
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
        "boxes": _to_devkit(np.concatenate([np.zeros((0, 4)), *(i["boxes"] for _, i in present)])),
        "labels": np.concatenate(
            [np.zeros(0, np.int64), *(item["labels"] for _, item in present)]
        ).astype(np.int64),
    }


def score_voc_results(
    detections: dict[str, np.ndarray],
    records: Sequence[AnnotationRecord],
    class_names: Sequence[str],
    *,
    use_07_metric: bool,
    iou_threshold: float = 0.5,
) -> dict[str, Any]:
    """VOC mAP of the detections of a results directory
    (:func:`read_voc_results_arrays`), as the devkit computes it: difficult ignored,
    inclusive-pixel IoU, a match needs IoU above ``iou_threshold``."""
    result = evaluate_voc_arrays(
        gt_images=np.repeat(np.arange(len(records)), [record.num_objects for record in records]),
        # The leading empty arrays keep np.concatenate defined for an empty dataset.
        gt_boxes=_to_devkit(np.concatenate([np.zeros((0, 4)), *(r.boxes for r in records)])),
        gt_labels=np.concatenate([np.zeros(0, np.int64), *(r.labels for r in records)]),
        gt_difficult=np.concatenate([np.zeros(0, bool), *(r.difficult for r in records)]),
        det_images=detections["images"],
        det_boxes=detections["boxes"],
        det_scores=detections["scores"],
        det_labels=detections["labels"],
        class_names=class_names,
        iou_threshold=iou_threshold,
        use_07_metric=use_07_metric,
        inclusive=True,
    )
    return {
        "metric": "voc07" if use_07_metric else "voc10",
        "mAP": result["mAP"],
        "ap_per_class": result["ap_per_class"],
        "curves": result["curves"],
    }


def coco_ground_truth(
    records: Sequence[AnnotationRecord], class_names: Sequence[str]
) -> dict[str, Any]:
    """A COCO ground-truth dict built from records (for datasets that are not COCO).

    Image ids are record positions, category ids are labels; VOC's difficult objects
    become crowd boxes, which COCOeval ignores as the VOC devkit does.
    """
    annotations = []
    for image_id, record in enumerate(records):
        for box, label, difficult in zip(
            record.boxes, record.labels, record.difficult, strict=True
        ):
            width, height = float(box[2] - box[0]), float(box[3] - box[1])
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": [float(box[0]), float(box[1]), width, height],
                    "area": width * height,
                    "iscrowd": int(difficult),
                }
            )
    return {
        "images": [
            {
                "id": image_id,
                "width": record.width,
                "height": record.height,
                "file_name": record.image_path.name,
            }
            for image_id, record in enumerate(records)
        ],
        "annotations": annotations,
        "categories": [
            {"id": label, "name": name} for label, name in enumerate(class_names, start=1)
        ],
    }


def coco_truth_and_ids(
    records: Sequence[AnnotationRecord],
    class_names: Sequence[str],
    annotation_file: Path | None = None,
) -> tuple[Any, list[int], list[int]]:
    """pycocotools ground truth, the COCO image id of each record and the category id of
    each label (1..C-1). With the dataset's own COCO ``annotation_file`` its areas and
    crowd boxes are used; otherwise the ground truth is built from the records."""
    from pycocotools.coco import COCO

    from data.coco import load_coco

    if annotation_file is not None:
        coco = load_coco(annotation_file)
        category_of_name = {category["name"]: key for key, category in coco.cats.items()}
        category_ids = [category_of_name[name] for name in class_names]
        return coco, [record.extra["coco_id"] for record in records], category_ids
    coco = COCO()
    coco.dataset = coco_ground_truth(records, class_names)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco, list(range(len(records))), list(range(1, len(class_names) + 1))


def coco_results(
    detections: Sequence[dict[str, np.ndarray] | None],
    image_ids: Sequence[int],
    category_ids: Sequence[int],
) -> list[dict[str, Any]]:
    """COCO results entries (``bbox`` as x, y, w, h); ``category_ids[label - 1]``."""
    entries = []
    for detection, image_id in zip(detections, image_ids, strict=True):
        if detection is None:
            continue
        for box, score, label in zip(
            detection["boxes"], detection["scores"], detection["labels"], strict=True
        ):
            x1, y1, x2, y2 = (float(value) for value in box)
            entries.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(category_ids[int(label) - 1]),
                    "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                    "score": round(float(score), 5),
                }
            )
    return entries


def score_coco(
    coco_gt: Any, results: list[dict[str, Any]], class_names: Sequence[str]
) -> dict[str, Any]:
    """pycocotools' bbox evaluation: AP, AP50, AP75, small/medium/large and the ARs,
    plus AP per class (IoU 0.5:0.95) and per IoU threshold (all classes, areas, 100
    detections per image: where the boxes' precision is lost)."""
    from pycocotools.cocoeval import COCOeval

    category_of_name = {
        category["name"]: category_id for category_id, category in coco_gt.cats.items()
    }
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        coco_dt = coco_gt.loadRes(results) if results else None
        if coco_dt is None:
            stats = np.zeros(len(COCO_STAT_NAMES))
            precision = None
        else:
            evaluator = COCOeval(coco_gt, coco_dt, "bbox")
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            stats = evaluator.stats
            precision = evaluator.eval["precision"]  # [T, R, K, A, M]
    ap_per_class = {}
    for name in class_names:
        category_id = category_of_name.get(name)
        if precision is None or category_id is None:
            ap_per_class[name] = float("nan")
            continue
        index = evaluator.params.catIds.index(category_id)
        values = precision[:, :, index, 0, -1]
        values = values[values > -1]
        ap_per_class[name] = float(values.mean()) if values.size else float("nan")
    ap_per_iou = {}
    if precision is not None:
        for index, threshold in enumerate(evaluator.params.iouThrs):
            values = precision[index, :, :, 0, -1]
            values = values[values > -1]
            ap_per_iou[f"{threshold:.2f}"] = float(values.mean()) if values.size else float("nan")
    result = {
        "metric": "coco",
        "mAP": float(stats[0]),
        "ap_per_class": ap_per_class,
        "ap_per_iou": ap_per_iou,
    }
    result.update({name: float(value) for name, value in zip(COCO_STAT_NAMES, stats, strict=True)})
    result["summary"] = printed.getvalue()
    return result


def write_metrics(result: dict[str, Any], directory: Path) -> Path:
    """``metrics.json``: metric, mAP, ap_per_class (and COCO's other numbers)."""
    keys = ["metric", "mAP", "ap_per_class", "ap_per_iou", *COCO_STAT_NAMES, "speed"]
    content = {key: result[key] for key in keys if key in result}
    path = directory / "metrics.json"
    path.write_text(json.dumps(content, indent=2), encoding="utf-8")
    return path


class Evaluator:
    """The metric ``eval.metric`` names, on one validation set: VOC07 (11-point),
    VOC2010+ (area) or COCO AP. train.py and test.py both score through it.

    The COCO ground truth is built once, here: from the set's own annotation file
    (COCO data) or from the records (other data; difficult objects become crowd boxes).

    Args:
        metric: ``voc07``, ``voc10`` or ``coco``.
        records: the set's annotations, in the order detections come.
        class_names: names of labels 1..C-1.
        iou_threshold: the VOC metrics' match threshold.
        annotation_file: the set's COCO annotation file, if it has one.
    """

    def __init__(
        self,
        *,
        metric: str,
        records: Sequence[AnnotationRecord],
        class_names: Sequence[str],
        iou_threshold: float = 0.5,
        annotation_file: Path | None = None,
    ) -> None:
        if metric not in METRICS:
            raise ConfigError(f"eval.metric={metric}: expected one of {', '.join(METRICS)}")
        self.metric = metric
        self.records = records
        self.class_names = list(class_names)
        self.iou_threshold = iou_threshold
        self.coco = None
        if metric == "coco":
            self.coco, self.image_ids, self.category_ids = coco_truth_and_ids(
                records, class_names, annotation_file
            )

    @classmethod
    def from_config(
        cls,
        config: Config,
        records: Sequence[AnnotationRecord],
        class_names: Sequence[str],
    ) -> Evaluator:
        """The evaluator of the config's validation set (``eval`` section)."""
        if config.eval.metric == "coco" and len(config.data.val_sets) != 1:
            raise ConfigError(
                "the COCO metric scores one annotation file: give one data.val_sets entry"
            )
        return cls(
            metric=config.eval.metric,
            records=records,
            class_names=class_names,
            iou_threshold=config.eval.iou_threshold,
            annotation_file=val_annotation_file(config) if config.eval.metric == "coco" else None,
        )

    def results_of(self, detections: Sequence[dict[str, np.ndarray] | None]) -> Any:
        """Per-image detections (0-based pixels) as what :meth:`score_results` takes:
        COCO results entries, or the VOC metrics' flat arrays."""
        if self.coco is not None:
            return coco_results(detections, self.image_ids, self.category_ids)
        return voc_results_arrays(detections)

    def write_results(
        self, detections: Sequence[dict[str, np.ndarray] | None], directory: Path
    ) -> None:
        """The VOC devkit files, and ``detections_coco.json`` for the COCO metric."""
        write_voc_results(self.records, detections, self.class_names, directory)
        if self.coco is not None:
            entries = self.results_of(detections)
            (directory / COCO_RESULTS_FILE).write_text(json.dumps(entries), encoding="utf-8")

    def read_results(self, directory: Path) -> Any:
        """The results a directory holds (:meth:`write_results`' files). For the COCO
        metric, a directory with the devkit files and no ``detections_coco.json`` (the
        results of another detector, say) is scored from the devkit files.

        Raises:
            FileNotFoundError: a results file is missing.
            ValueError: a results file is malformed (file and line named).
        """
        if self.coco is not None:
            path = directory / COCO_RESULTS_FILE
            if (
                not path.is_file()
                and (directory / f"{VOC_RESULTS_PREFIX}{self.class_names[0]}.txt").is_file()
            ):
                # Another detector's devkit files (e.g. converted from its own output):
                # scored against the same COCO ground truth as this project's.
                arrays = read_voc_results_arrays(directory, self.records, self.class_names)
                return self.results_of(detections_of_arrays(arrays, len(self.records)))
            if not path.is_file():
                raise FileNotFoundError(f"{path}: COCO results file not found")
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: not a JSON file ({error})") from error
        return read_voc_results_arrays(directory, self.records, self.class_names)

    def score_results(self, results: Any) -> dict[str, Any]:
        """``metric``, ``mAP``, ``ap_per_class`` and, for VOC, each class's ``curves``;
        for COCO also AP50, AP75, ..., AR_large and pycocotools' printed ``summary``."""
        if self.coco is not None:
            return score_coco(self.coco, results, self.class_names)
        return score_voc_results(
            results,
            self.records,
            self.class_names,
            use_07_metric=self.metric == "voc07",
            iou_threshold=self.iou_threshold,
        )

    def score(self, detections: Sequence[dict[str, np.ndarray] | None]) -> dict[str, Any]:
        """:meth:`score_results` of per-image detections (None counts as no detections)."""
        return self.score_results(self.results_of(detections))


PR_PLOT_FILE = "pr_curves.png"


def plot_pr_curves(curves: dict[str, ClassResult], directory: Path) -> Path:
    """Every class's precision/recall curve in one figure, ``pr_curves.png``: one panel
    per class with its AP (:func:`utils.visualize.draw_pr_curves`)."""
    image = draw_pr_curves(
        [(name, curve.recall, curve.precision, curve.ap) for name, curve in curves.items()]
    )
    path = directory / PR_PLOT_FILE
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"{path}: could not write the PR plot")
    return path
