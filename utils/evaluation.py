"""Results files and scoring: VOC devkit results (comp4), COCO results JSON, metrics.json,
per-class precision/recall plots.

Detections arrive per image in 0-based continuous pixels (what :func:`utils.engine.predict`
returns). VOC files use the devkit's 1-based inclusive pixels (``x1 + 1, y1 + 1, x2, y2``)
and are scored with the devkit's ``+1`` rule; the ground truth is converted the same way,
so scoring the files equals scoring the arrays.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data.dataset import AnnotationRecord
from utils.metrics import ClassResult, evaluate_voc

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


def read_voc_results(
    directory: Path, records: Sequence[AnnotationRecord], class_names: Sequence[str]
) -> list[dict[str, np.ndarray]]:
    """Per-image detections (devkit pixels) from a results directory.

    Raises:
        FileNotFoundError: a class has no results file.
        ValueError: a line is malformed or names an image the dataset does not have.
    """
    index_of = {record.image_id: index for index, record in enumerate(records)}
    boxes: list[list[list[float]]] = [[] for _ in records]
    scores: list[list[float]] = [[] for _ in records]
    labels: list[list[int]] = [[] for _ in records]
    for label, name in enumerate(class_names, start=1):
        path = directory / f"{VOC_RESULTS_PREFIX}{name}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: results file of class '{name}' not found")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 6:
                raise ValueError(f"{path}:{number}: expected 'image_id score x1 y1 x2 y2'")
            if parts[0] not in index_of:
                raise ValueError(f"{path}:{number}: image '{parts[0]}' is not in the dataset")
            try:
                values = [float(value) for value in parts[1:]]
            except ValueError as error:
                raise ValueError(f"{path}:{number}: non-numeric value ({error})") from error
            image = index_of[parts[0]]
            scores[image].append(values[0])
            boxes[image].append(values[1:])
            labels[image].append(label)
    return [
        {
            "boxes": np.asarray(image_boxes, dtype=np.float64).reshape(-1, 4),
            "scores": np.asarray(image_scores, dtype=np.float64),
            "labels": np.asarray(image_labels, dtype=np.int64),
        }
        for image_boxes, image_scores, image_labels in zip(boxes, scores, labels, strict=True)
    ]


def score_voc_results(
    directory: Path,
    records: Sequence[AnnotationRecord],
    class_names: Sequence[str],
    *,
    use_07_metric: bool,
    iou_threshold: float = 0.5,
) -> dict[str, Any]:
    """VOC mAP of a results directory, as the devkit computes it (difficult ignored,
    inclusive-pixel IoU, a match needs IoU above ``iou_threshold``)."""
    ground_truth = [
        {"boxes": _to_devkit(record.boxes), "labels": record.labels, "difficult": record.difficult}
        for record in records
    ]
    result = evaluate_voc(
        ground_truth,
        read_voc_results(directory, records, class_names),
        class_names,
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
    plus AP per class (IoU 0.5:0.95)."""
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
    result = {"metric": "coco", "mAP": float(stats[0]), "ap_per_class": ap_per_class}
    result.update({name: float(value) for name, value in zip(COCO_STAT_NAMES, stats, strict=True)})
    result["summary"] = printed.getvalue()
    return result


def write_metrics(result: dict[str, Any], directory: Path) -> Path:
    """``metrics.json``: metric, mAP, ap_per_class (and COCO's other numbers)."""
    keys = ["metric", "mAP", "ap_per_class", *COCO_STAT_NAMES, "speed"]
    content = {key: result[key] for key in keys if key in result}
    path = directory / "metrics.json"
    path.write_text(json.dumps(content, indent=2), encoding="utf-8")
    return path


def plot_pr_curves(curves: dict[str, ClassResult], directory: Path) -> list[Path]:
    """One precision/recall plot per class (``pr_<class>.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for name, curve in curves.items():
        figure, axes = plt.subplots(figsize=(4, 4), dpi=100)
        if curve.recall.size:
            axes.plot(curve.recall, curve.precision, linewidth=1.5)
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1.02)
        axes.set_xlabel("recall")
        axes.set_ylabel("precision")
        axes.set_title(f"{name}: AP {curve.ap:.3f}")
        axes.grid(alpha=0.3)
        figure.tight_layout()
        path = directory / f"pr_{name}.png"
        figure.savefig(path)
        plt.close(figure)
        paths.append(path)
    return paths
