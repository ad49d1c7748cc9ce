"""The Pascal VOC devkit's per-class evaluation, one detection at a time.

An independent reference for utils/metrics.py: written from the devkit's published
algorithm (VOCevaldet.m and VOCap.m of the VOC2012 devkit; the 11-point rule of
VOC2007), it imports nothing of the project, so a bug in the vectorised evaluator
cannot hide in both. tools/eval_benchmark.py times the project's evaluator against it.

The algorithm, per class:

1. Rank the detections by decreasing confidence (MATLAB's ``sort`` is stable).
2. Walk the ranking. For each detection take the ground-truth box of its image with
   the largest overlap (the first one on ties) among the boxes it intersects, where
   overlap is intersection over union with the devkit's inclusive pixels (``+1`` on
   every side length).
3. Overlap strictly above the threshold: a difficult box makes the detection count
   as neither true nor false positive; a box not yet claimed makes it a true positive
   and claims the box; a claimed box makes it a false positive. Otherwise, including
   a detection on an image without boxes of the class, it is a false positive.
4. Recall is the cumulative true positives over the non-difficult boxes; precision the
   cumulative true positives over the cumulative detections counted.
5. VOC2007: the mean over recall levels 0, 0.1, ..., 1 of the best precision at that
   recall or above (0 when no point reaches it). VOC2010+: the area under the
   precision envelope (precision made non-increasing from the right), summed where
   recall changes.
"""

from __future__ import annotations

import math


def devkit_ap(
    det_images,
    det_scores,
    det_boxes,
    gt_images,
    gt_boxes,
    gt_difficult,
    *,
    iou_threshold: float = 0.5,
    use_07_metric: bool = True,
    inclusive: bool = True,
) -> float:
    """AP of one class. Detections: image index, score and xyxy box each; ground truth:
    image index, xyxy box and difficult flag each (any sequences). ``inclusive`` adds
    the devkit's +1 to side lengths (off for continuous coordinates)."""
    extra = 1.0 if inclusive else 0.0
    truth: dict[int, list[list]] = {}
    for image, box, difficult in zip(gt_images, gt_boxes, gt_difficult, strict=True):
        truth.setdefault(int(image), []).append([[float(v) for v in box], bool(difficult), False])
    num_positives = sum(1 for boxes in truth.values() for entry in boxes if not entry[1])

    ranking = sorted(range(len(det_scores)), key=lambda index: -float(det_scores[index]))
    true_positives, false_positives = [], []
    for index in ranking:
        box = [float(v) for v in det_boxes[index]]
        best_overlap, best = -math.inf, None
        for entry in truth.get(int(det_images[index]), []):
            gt = entry[0]
            width = min(box[2], gt[2]) - max(box[0], gt[0]) + extra
            height = min(box[3], gt[3]) - max(box[1], gt[1]) + extra
            if width <= 0 or height <= 0:
                continue  # VOCevaldet.m considers only boxes that intersect
            inter = width * height
            union = (
                (box[2] - box[0] + extra) * (box[3] - box[1] + extra)
                + (gt[2] - gt[0] + extra) * (gt[3] - gt[1] + extra)
                - inter
            )
            if inter / union > best_overlap:
                best_overlap, best = inter / union, entry
        tp = fp = 0
        if best is not None and best_overlap > iou_threshold:
            if not best[1]:
                if not best[2]:
                    tp, best[2] = 1, True
                else:
                    fp = 1
        else:
            fp = 1
        true_positives.append(tp)
        false_positives.append(fp)

    recall, precision, tp_sum, fp_sum = [], [], 0, 0
    for tp, fp in zip(true_positives, false_positives, strict=True):
        tp_sum, fp_sum = tp_sum + tp, fp_sum + fp
        recall.append(tp_sum / num_positives if num_positives else math.nan)
        precision.append(tp_sum / max(tp_sum + fp_sum, 2.220446049250313e-16))
    return voc_ap(recall, precision, use_07_metric=use_07_metric)


def voc_ap(recall, precision, *, use_07_metric: bool) -> float:
    """AP of a precision/recall curve, as VOCap.m (or VOC2007's 11-point rule)."""
    if use_07_metric:
        total = 0.0
        for step in range(11):
            # MATLAB's 0:0.1:1 and numpy's arange(0, 1.1, 0.1) are step * 0.1:
            # 0.30000000000000004, not 0.3, so a recall of exactly 3/10 misses it.
            level = step * 0.1
            reached = [p for r, p in zip(recall, precision, strict=True) if r >= level]
            total += (max(reached) if reached else 0.0) / 11
        return total
    recalls = [0.0, *recall, 1.0]
    precisions = [0.0, *precision, 0.0]
    for index in range(len(precisions) - 2, -1, -1):
        precisions[index] = max(precisions[index], precisions[index + 1])
    return sum(
        (recalls[index + 1] - recalls[index]) * precisions[index + 1]
        for index in range(len(recalls) - 1)
        if recalls[index + 1] != recalls[index]
    )
