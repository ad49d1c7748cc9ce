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
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from data.records import AnnotationRecord
from data.sources import val_annotation_file
from engine.voc_results import (
    VOC_RESULTS_PREFIX,
    detections_of_arrays,
    read_voc_results_arrays,
    to_devkit,
    voc_results_arrays,
    write_voc_results,
)
from utils.boxes import xyxy_to_xywh
from utils.config import METRICS, Config, ConfigError
from utils.files import atomic_write_text
from utils.metrics import ClassResult, evaluate_voc_arrays
from utils.visualize import draw_pr_curves

COCO_RESULTS_FILE = "detections_coco.json"
COCO_STAT_NAMES = (
    "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
)  # fmt: skip


NO_DETECTIONS = "no detections: every AP is 0 (is postprocess.score_threshold too high?)"


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
        gt_boxes=to_devkit(np.concatenate([np.zeros((0, 4)), *(r.boxes for r in records)])),
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
        for bbox, label, difficult in zip(
            xyxy_to_xywh(record.boxes), record.labels, record.difficult, strict=True
        ):
            x, y, width, height = (float(value) for value in bbox)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": [x, y, width, height],
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
        bboxes = xyxy_to_xywh(np.asarray(detection["boxes"], dtype=np.float64).reshape(-1, 4))
        for bbox, score, label in zip(
            bboxes, detection["scores"], detection["labels"], strict=True
        ):
            entries.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(category_ids[int(label) - 1]),
                    "bbox": [round(float(value), 2) for value in bbox],
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
        if category_id is None:
            ap_per_class[name] = float("nan")
            continue
        if precision is None:
            # No detections at all: a class with ground truth has recall 0, AP 0; one
            # without is undefined (NaN, null in metrics.json), as pycocotools leaves it.
            has_truth = bool(coco_gt.getAnnIds(catIds=[category_id], iscrowd=False))
            ap_per_class[name] = 0.0 if has_truth else float("nan")
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
    if not results:
        result["note"] = NO_DETECTIONS
    return result


def write_metrics(result: dict[str, Any], directory: Path) -> Path:
    """``metrics.json``: metric, mAP, ap_per_class (and COCO's other numbers), valid
    JSON: an undefined value (NaN: a class without ground truth) is ``null``."""
    keys = ["metric", "mAP", "ap_per_class", "ap_per_iou", *COCO_STAT_NAMES, "note", "speed"]
    path = directory / "metrics.json"
    content = {key: result[key] for key in keys if key in result}
    atomic_write_text(path, finite_json(content), what="metrics")
    return path


def finite_json(content: Any) -> str:
    """``content`` as indented JSON that any parser reads: NaN and infinities (an AP
    that is undefined) become ``null``."""
    return json.dumps(_without_nan(content), indent=2, allow_nan=False)


def _without_nan(value: Any) -> Any:
    """``value`` with every non-finite float (in dicts and lists) replaced by None."""
    if isinstance(value, dict):
        return {key: _without_nan(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_without_nan(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class VocScoring:
    """The VOC metrics' side of :class:`Evaluator`: flat detection arrays, scored by the
    devkit's matching (11-point or area AP)."""

    def __init__(
        self,
        records: Sequence[AnnotationRecord],
        class_names: Sequence[str],
        *,
        use_07_metric: bool,
        iou_threshold: float,
    ) -> None:
        self.records = records
        self.class_names = list(class_names)
        self.use_07_metric = use_07_metric
        self.iou_threshold = iou_threshold

    def results_of(self, detections: Sequence[dict[str, np.ndarray] | None]) -> Any:
        return voc_results_arrays(detections)

    def write(self, detections: Sequence[dict[str, np.ndarray] | None], directory: Path) -> None:
        """Nothing beyond the devkit files every metric writes."""

    def read(self, directory: Path) -> Any:
        return read_voc_results_arrays(directory, self.records, self.class_names)

    def score(self, results: Any) -> dict[str, Any]:
        result = score_voc_results(
            results,
            self.records,
            self.class_names,
            use_07_metric=self.use_07_metric,
            iou_threshold=self.iou_threshold,
        )
        if len(results["scores"]) == 0:
            result["note"] = NO_DETECTIONS
        return result


class CocoScoring:
    """The COCO metric's side of :class:`Evaluator`: results entries against a
    pycocotools ground truth built once, from the set's own annotation file (COCO data)
    or from the records (other data; difficult objects become crowd boxes)."""

    def __init__(
        self,
        records: Sequence[AnnotationRecord],
        class_names: Sequence[str],
        annotation_file: Path | None,
    ) -> None:
        self.records = records
        self.class_names = list(class_names)
        self.coco, self.image_ids, self.category_ids = coco_truth_and_ids(
            records, class_names, annotation_file
        )

    def results_of(self, detections: Sequence[dict[str, np.ndarray] | None]) -> Any:
        return coco_results(detections, self.image_ids, self.category_ids)

    def write(self, detections: Sequence[dict[str, np.ndarray] | None], directory: Path) -> None:
        entries = self.results_of(detections)
        (directory / COCO_RESULTS_FILE).write_text(json.dumps(entries), encoding="utf-8")

    def read(self, directory: Path) -> Any:
        """``detections_coco.json``; a directory with the devkit files and no such file
        (the results of another detector, say) is scored from the devkit files, against
        the same COCO ground truth as this project's."""
        path = directory / COCO_RESULTS_FILE
        if (
            not path.is_file()
            and (directory / f"{VOC_RESULTS_PREFIX}{self.class_names[0]}.txt").is_file()
        ):
            arrays = read_voc_results_arrays(directory, self.records, self.class_names)
            return self.results_of(detections_of_arrays(arrays, len(self.records)))
        if not path.is_file():
            raise FileNotFoundError(f"{path}: COCO results file not found")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not a JSON file ({error})") from error

    def score(self, results: Any) -> dict[str, Any]:
        return score_coco(self.coco, results, self.class_names)


class Evaluator:
    """The metric ``eval.metric`` names, on one validation set: VOC07 (11-point),
    VOC2010+ (area) or COCO AP. train.py and test.py both score through it; the metric
    is chosen once, here (:class:`VocScoring` or :class:`CocoScoring`).

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
        self.scoring: VocScoring | CocoScoring = (
            CocoScoring(records, class_names, annotation_file)
            if metric == "coco"
            else VocScoring(
                records,
                class_names,
                use_07_metric=metric == "voc07",
                iou_threshold=iou_threshold,
            )
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
        return self.scoring.results_of(detections)

    def write_results(
        self, detections: Sequence[dict[str, np.ndarray] | None], directory: Path
    ) -> None:
        """The VOC devkit files, and ``detections_coco.json`` for the COCO metric."""
        write_voc_results(self.records, detections, self.class_names, directory)
        self.scoring.write(detections, directory)

    def read_results(self, directory: Path) -> Any:
        """The results a directory holds (:meth:`write_results`' files).

        Raises:
            FileNotFoundError: a results file is missing.
            ValueError: a results file is malformed (file and line named).
        """
        return self.scoring.read(directory)

    def score_results(self, results: Any) -> dict[str, Any]:
        """``metric``, ``mAP``, ``ap_per_class`` and, for VOC, each class's ``curves``;
        for COCO also AP50, AP75, ..., AR_large and pycocotools' printed ``summary``."""
        return self.scoring.score(results)

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
