"""Seconds to score a VOC07-test-sized result set: the vectorised evaluator against the
classic per-detection loop (the devkit's Python port, voc_eval.py), on the same data.

    python -m utils.eval_benchmark [--images 4952] [--detections-per-image 200] [--skip-classic]

The synthetic set mimics VOC2007 test: 4,952 images, about 3 objects per image over 20
classes (a tenth marked difficult), and 200 detections per image (the post-processing
cap), about 1M in all: jittered copies of the image's boxes plus random boxes, with
random scores.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from utils.metrics import average_precision, evaluate_voc

NUM_CLASSES = 20


def synthetic_voc(images: int, detections_per_image: int, seed: int = 0) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    ground_truth, detections = [], []
    for _ in range(images):
        count = int(rng.integers(1, 6))
        corner = rng.uniform(0, 350, (count, 2))
        boxes = np.concatenate([corner, corner + rng.uniform(20, 150, (count, 2))], 1).round()
        labels = rng.integers(1, NUM_CLASSES + 1, count)
        ground_truth.append(
            {"boxes": boxes, "labels": labels, "difficult": rng.random(count) < 0.1}
        )
        source = rng.integers(0, count, detections_per_image)
        jitter = rng.normal(0, 12, (detections_per_image, 4))
        random_boxes = np.concatenate(
            [corner := rng.uniform(0, 400, (detections_per_image, 2)), corner + 40], 1
        )
        matched = rng.random(detections_per_image) < 0.3
        det_boxes = np.where(matched[:, None], boxes[source] + jitter, random_boxes)
        det_labels = np.where(
            matched, labels[source], rng.integers(1, NUM_CLASSES + 1, detections_per_image)
        )
        detections.append(
            {"boxes": det_boxes, "scores": rng.random(detections_per_image), "labels": det_labels}
        )
    return ground_truth, detections


def classic_voc_ap(
    det_images: np.ndarray,
    det_scores: np.ndarray,
    det_boxes: np.ndarray,
    gt_images: np.ndarray,
    gt_boxes: np.ndarray,
    gt_difficult: np.ndarray,
    *,
    iou_threshold: float = 0.5,
    use_07_metric: bool = True,
    inclusive: bool = True,
) -> float:
    """AP of one class by voc_eval.py's per-detection loop (with a stable sort, as the
    MATLAB devkit's): the independent reference the vectorised evaluator is tested and
    timed against. Arguments as :func:`utils.metrics.evaluate_class`."""
    num_positives = int((~gt_difficult).sum())
    images = {}
    for image in np.unique(gt_images):
        mask = gt_images == image
        images[image] = {
            "boxes": gt_boxes[mask],
            "difficult": gt_difficult[mask],
            "taken": np.zeros(int(mask.sum()), dtype=bool),
        }
    order = np.argsort(-det_scores, kind="stable")
    tp, fp = np.zeros(len(order)), np.zeros(len(order))
    extra = 1.0 if inclusive else 0.0
    for rank, index in enumerate(order):
        box, best, entry = det_boxes[index], -np.inf, images.get(det_images[index])
        if entry is not None:
            gts = entry["boxes"]
            iw = np.maximum(
                np.minimum(gts[:, 2], box[2]) - np.maximum(gts[:, 0], box[0]) + extra, 0
            )
            ih = np.maximum(
                np.minimum(gts[:, 3], box[3]) - np.maximum(gts[:, 1], box[1]) + extra, 0
            )
            inter = iw * ih
            union = (
                (box[2] - box[0] + extra) * (box[3] - box[1] + extra)
                + (gts[:, 2] - gts[:, 0] + extra) * (gts[:, 3] - gts[:, 1] + extra)
                - inter
            )
            with np.errstate(invalid="ignore", divide="ignore"):
                overlaps = inter / union
            best, best_index = overlaps.max(), overlaps.argmax()
        if best > iou_threshold:
            if not entry["difficult"][best_index]:
                if not entry["taken"][best_index]:
                    tp[rank], entry["taken"][best_index] = 1, True
                else:
                    fp[rank] = 1
        else:
            fp[rank] = 1
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return average_precision(tp / num_positives, precision, use_07_metric)


def classic_class_ap(ground_truth: list, detections: list, label: int) -> float:
    """:func:`classic_voc_ap` of one class of per-image lists (VOC07, devkit pixels)."""

    def gather(items: list, key: str) -> tuple[np.ndarray, np.ndarray]:
        masks = [item["labels"] == label for item in items]
        images = np.concatenate([np.full(int(mask.sum()), i) for i, mask in enumerate(masks)])
        values = np.concatenate([item[key][mask] for item, mask in zip(items, masks, strict=True)])
        return images, values

    gt_images, gt_boxes = gather(ground_truth, "boxes")
    _, gt_difficult = gather(ground_truth, "difficult")
    det_images, det_boxes = gather(detections, "boxes")
    _, det_scores = gather(detections, "scores")
    return classic_voc_ap(det_images, det_scores, det_boxes, gt_images, gt_boxes, gt_difficult)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4952, help="images in the result set")
    parser.add_argument(
        "--detections-per-image", type=int, default=200, help="detections per image"
    )
    parser.add_argument(
        "--skip-classic", action="store_true", help="time the vectorised evaluator only"
    )
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    ground_truth, detections = synthetic_voc(args.images, args.detections_per_image)
    names = [f"class{label}" for label in range(1, NUM_CLASSES + 1)]
    total = sum(len(item["scores"]) for item in detections)
    objects = sum(len(item["labels"]) for item in ground_truth)
    print(f"{args.images} images, {objects} objects, {total} detections, {NUM_CLASSES} classes")
    start = time.perf_counter()
    result = evaluate_voc(ground_truth, detections, names, use_07_metric=True, inclusive=True)
    vectorised = time.perf_counter() - start
    print(f"vectorised evaluator   {vectorised:7.2f} s   mAP {result['mAP']:.6f}")
    if args.skip_classic:
        return
    start = time.perf_counter()
    aps = [classic_class_ap(ground_truth, detections, label) for label in range(1, NUM_CLASSES + 1)]
    classic = time.perf_counter() - start
    print(f"classic per-detection  {classic:7.2f} s   mAP {float(np.mean(aps)):.6f}")
    print(f"speed-up               {classic / vectorised:7.1f}x")


if __name__ == "__main__":
    main(parse_args())
