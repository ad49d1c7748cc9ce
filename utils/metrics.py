"""Pascal VOC average precision, vectorised, with the devkit's exact rules.

Per class, detections are ranked by score (a stable sort, as MATLAB's ``sort`` in the
devkit). Each detection's best ground-truth box in its image is the one of highest IoU
(the first on ties). It is a true positive when that IoU exceeds the threshold (strictly,
``ovmax > minoverlap``), the box is not difficult and no higher-ranked detection took
it; it is ignored when the box is difficult; otherwise it is a false positive.
Because the best box does not depend on which boxes are taken, "first detection to
claim a box" is a first-occurrence test over the ranking: no Python loop per detection.

AP is the VOC2007 11-point interpolated precision (``use_07_metric``) or the
VOC2010+ area under the monotone precision envelope.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from utils.boxes import box_iou_np


@dataclass
class ClassResult:
    """AP of one class with its precision/recall curve (AP NaN without positives)."""

    ap: float
    num_positives: int
    precision: np.ndarray
    recall: np.ndarray


def average_precision(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """AP from a precision/recall curve, as the VOC devkit computes it."""
    if use_07_metric:
        ap = 0.0
        for threshold in np.arange(0.0, 1.1, 0.1):
            above = precision[recall >= threshold]
            ap += (above.max() if above.size else 0.0) / 11.0
        return float(ap)
    recall_points = np.concatenate([[0.0], recall, [1.0]])
    precision_points = np.concatenate([[0.0], precision, [0.0]])
    precision_points = np.maximum.accumulate(precision_points[::-1])[::-1]
    changes = np.flatnonzero(recall_points[1:] != recall_points[:-1])
    return float(
        np.sum(
            (recall_points[changes + 1] - recall_points[changes]) * precision_points[changes + 1]
        )
    )


def evaluate_class(
    det_images: np.ndarray,
    det_scores: np.ndarray,
    det_boxes: np.ndarray,
    gt_images: np.ndarray,
    gt_boxes: np.ndarray,
    gt_difficult: np.ndarray,
    *,
    iou_threshold: float = 0.5,
    use_07_metric: bool = True,
    inclusive: bool = False,
) -> ClassResult:
    """AP of one class.

    Args:
        det_images: ``[D]`` image index of each detection.
        det_scores: ``[D]`` confidences.
        det_boxes: ``[D, 4]`` xyxy.
        gt_images: ``[G]`` image index of each ground-truth box.
        gt_boxes: ``[G, 4]`` xyxy in the same coordinates.
        gt_difficult: ``[G]`` bool.
        iou_threshold: a match needs IoU strictly above it.
        use_07_metric: 11-point AP (VOC2007) instead of the area (VOC2010+).
        inclusive: boxes are 1-based inclusive pixels (devkit files): widths get +1.
    """
    num_positives = int((~gt_difficult).sum())
    order = np.argsort(-det_scores, kind="stable")
    det_images, det_boxes = det_images[order], det_boxes[order]
    num_dets = det_images.shape[0]

    # Candidate pairs: every detection with every ground-truth box of its image.
    gt_order = np.argsort(gt_images, kind="stable")  # keeps file order inside an image
    sorted_gt_images = gt_images[gt_order]
    starts = np.searchsorted(sorted_gt_images, det_images, side="left")
    ends = np.searchsorted(sorted_gt_images, det_images, side="right")
    counts = ends - starts
    pair_det = np.repeat(np.arange(num_dets), counts)
    offsets = np.cumsum(counts) - counts
    pair_gt = gt_order[starts[pair_det] + np.arange(pair_det.size) - offsets[pair_det]]
    # Degenerate boxes give NaN overlaps, which (as in the devkit) never match.
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = box_iou_np(det_boxes[pair_det], gt_boxes[pair_gt], inclusive=inclusive)
        best_iou = np.full(num_dets, -np.inf)
        np.maximum.at(best_iou, pair_det, iou)
    # First ground-truth box reaching the maximum (the devkit's max() returns the first).
    is_best = iou == best_iou[pair_det]
    best_pair = np.full(num_dets, np.iinfo(np.int64).max)
    np.minimum.at(best_pair, pair_det[is_best], np.flatnonzero(is_best))
    has_match = best_iou > iou_threshold
    # No pairs at all (no detection on an image with this class's boxes): nothing matches.
    best_gt = np.full(num_dets, -1)
    best_gt[has_match] = pair_gt[best_pair[has_match]]

    difficult = np.zeros(num_dets, dtype=bool)
    difficult[has_match] = gt_difficult[best_gt[has_match]]
    claims = has_match & ~difficult
    true_positive = np.zeros(num_dets, dtype=bool)
    claiming = np.flatnonzero(claims)
    _, first = np.unique(best_gt[claiming], return_index=True)
    true_positive[claiming[first]] = True
    false_positive = ~has_match | (claims & ~true_positive)

    tp = np.cumsum(true_positive, dtype=np.float64)
    fp = np.cumsum(false_positive, dtype=np.float64)
    recall = tp / num_positives if num_positives else np.full(num_dets, np.nan)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    ap = average_precision(recall, precision, use_07_metric) if num_positives else float("nan")
    return ClassResult(ap=ap, num_positives=num_positives, precision=precision, recall=recall)


def _stack(
    items: Sequence[dict[str, np.ndarray]], key: str, dtype: type, columns: int | None = None
) -> np.ndarray:
    """``items[i][key]`` of every image, concatenated (``[N]`` or ``[N, columns]``)."""
    shape = (-1, columns) if columns else (-1,)
    parts = [np.asarray(item[key], dtype=dtype).reshape(shape) for item in items]
    return np.concatenate(parts) if parts else np.zeros((0, columns) if columns else 0, dtype)


def _image_index(items: Sequence[dict[str, np.ndarray]], key: str) -> np.ndarray:
    """The image index of every entry of ``_stack(items, key, ...)``."""
    parts = [np.full(len(item[key]), index) for index, item in enumerate(items)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def evaluate_voc(
    ground_truth: Sequence[dict[str, np.ndarray]],
    detections: Sequence[dict[str, np.ndarray]],
    class_names: Sequence[str],
    *,
    iou_threshold: float = 0.5,
    use_07_metric: bool = True,
    inclusive: bool = False,
) -> dict:
    """VOC mAP of per-image detections against per-image ground truth.

    Args:
        ground_truth: per image ``boxes`` ``[G, 4]``, ``labels`` ``[G]`` (1..C-1),
            ``difficult`` ``[G]``.
        detections: per image (same order) ``boxes`` ``[D, 4]``, ``scores``, ``labels``.
        class_names: names of labels 1..C-1.

    Returns:
        ``mAP`` (mean over classes with positives), ``ap_per_class`` {name: AP} (NaN
        for classes without positives) and ``curves`` {name: ClassResult}.
    """
    if len(ground_truth) != len(detections):
        raise ValueError(
            f"{len(ground_truth)} ground-truth images but {len(detections)} detection lists"
        )
    return evaluate_voc_arrays(
        gt_images=_image_index(ground_truth, "labels"),
        gt_boxes=_stack(ground_truth, "boxes", np.float64, columns=4),
        gt_labels=_stack(ground_truth, "labels", np.int64),
        gt_difficult=_stack(ground_truth, "difficult", bool),
        det_images=_image_index(detections, "scores"),
        det_boxes=_stack(detections, "boxes", np.float64, columns=4),
        det_scores=_stack(detections, "scores", np.float64),
        det_labels=_stack(detections, "labels", np.int64),
        class_names=class_names,
        iou_threshold=iou_threshold,
        use_07_metric=use_07_metric,
        inclusive=inclusive,
    )


def evaluate_voc_arrays(
    *,
    gt_images: np.ndarray,
    gt_boxes: np.ndarray,
    gt_labels: np.ndarray,
    gt_difficult: np.ndarray,
    det_images: np.ndarray,
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    det_labels: np.ndarray,
    class_names: Sequence[str],
    iou_threshold: float = 0.5,
    use_07_metric: bool = True,
    inclusive: bool = False,
) -> dict:
    """:func:`evaluate_voc` on flat arrays: every ground-truth box (``[G]`` image index,
    ``[G, 4]`` boxes, ``[G]`` labels, ``[G]`` difficult) and every detection (``[D]``
    image index, ``[D, 4]`` boxes, ``[D]`` scores, ``[D]`` labels) of the set."""
    curves: dict[str, ClassResult] = {}
    for label, name in enumerate(class_names, start=1):
        det_mask, gt_mask = det_labels == label, gt_labels == label
        curves[name] = evaluate_class(
            det_images[det_mask],
            det_scores[det_mask],
            det_boxes[det_mask],
            gt_images[gt_mask],
            gt_boxes[gt_mask],
            gt_difficult[gt_mask],
            iou_threshold=iou_threshold,
            use_07_metric=use_07_metric,
            inclusive=inclusive,
        )
    aps = [result.ap for result in curves.values() if result.num_positives > 0]
    return {
        "mAP": float(np.mean(aps)) if aps else float("nan"),
        "ap_per_class": {name: result.ap for name, result in curves.items()},
        "curves": curves,
    }
