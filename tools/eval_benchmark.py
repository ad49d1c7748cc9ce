"""Seconds to score a VOC07-test-sized result set: this project against the classic
per-detection loop (the devkit's Python port, voc_eval.py), on the same data.

    python -m tools.eval_benchmark                    # the evaluators alone, in memory
    python -m tools.eval_benchmark --whole-command    # test.py --eval-only from the shell

The synthetic set mimics VOC2007 test: 4,952 images of 500x375, about 3 objects per
image over 20 classes (a tenth marked difficult), and 200 detections per image (the
post-processing cap), about 1M in all: jittered copies of the image's boxes plus random
boxes, with random scores.

``--whole-command`` writes that set to disk as a VOCdevkit (XML annotations, split list,
placeholder images), the detections as devkit results files and a config naming them,
then times, in the same run and in alternation:

- ours: ``python test.py --config CONFIG --eval-only DIR`` as a child process, the whole
  command (interpreter start, imports, XML, results files, scoring, PR plots,
  metrics.json);
- classic: voc_eval.py's work for every class with the annotations already parsed (its
  ``annots.pkl`` cache), i.e. reading the results file line by line and the loop over
  detections; the XML parsing it does on a first run is timed and printed apart.

It prints the median of ``--rounds`` of each, their ratio and both mAPs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np

from utils.boxes import box_iou_np
from utils.cli import (
    run_command,
    script_parser,
)
from utils.metrics import average_precision, evaluate_voc
from utils.timing import time_interleaved

NUM_CLASSES = 20
CLASS_NAMES = [f"class{label}" for label in range(1, NUM_CLASSES + 1)]
IMAGE_WIDTH, IMAGE_HEIGHT = 500, 375
REPO_ROOT = Path(__file__).resolve().parent.parent


def synthetic_voc(images: int, detections_per_image: int, seed: int = 0) -> tuple[list, list]:
    """Per-image ground truth (``boxes`` in devkit pixels: 1-based, inclusive, integral;
    ``labels`` 1..20, ``difficult``) and detections (``boxes``, ``scores``, ``labels``)."""
    rng = np.random.default_rng(seed)
    ground_truth, detections = [], []
    for _ in range(images):
        count = int(rng.integers(1, 6))
        corner = rng.uniform(1, 350, (count, 2))
        boxes = np.concatenate([corner, corner + rng.uniform(20, 150, (count, 2))], 1).round()
        boxes = np.minimum(boxes, [IMAGE_WIDTH, IMAGE_HEIGHT, IMAGE_WIDTH, IMAGE_HEIGHT])
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
    """AP of one class by voc_eval.py's per-detection loop (numpy over the image's
    boxes for each detection; a stable sort, as the MATLAB devkit's): the baseline the
    vectorised evaluator is timed against. The tests check the evaluator against
    tests/voc_devkit_reference.py, which shares no code with either. Arguments as
    :func:`utils.metrics.evaluate_class`."""
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
    for rank, index in enumerate(order):
        box, best, entry = det_boxes[index], -np.inf, images.get(det_images[index])
        if entry is not None:
            overlaps = box_iou_np(entry["boxes"], box, inclusive=inclusive)
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


def write_devkit(root: Path, ground_truth: list, detections: list) -> tuple[Path, Path]:
    """The set as ``root/VOCdevkit/VOC2007`` (XML, ``ImageSets/Main/test.txt``, one
    placeholder JPEG per image), the detections as devkit results files in
    ``root/results`` and ``root/config.yaml``. Returns (config, results directory)."""
    import cv2

    year = root / "VOCdevkit" / "VOC2007"
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year / folder).mkdir(parents=True, exist_ok=True)
    placeholder = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    ids = [f"{index:06d}" for index in range(len(ground_truth))]
    for image_id, truth in zip(ids, ground_truth, strict=True):
        objects = "".join(
            f"<object><name>{CLASS_NAMES[label - 1]}</name><pose>Unspecified</pose>"
            f"<truncated>0</truncated><difficult>{int(difficult)}</difficult><bndbox>"
            f"<xmin>{int(box[0])}</xmin><ymin>{int(box[1])}</ymin>"
            f"<xmax>{int(box[2])}</xmax><ymax>{int(box[3])}</ymax></bndbox></object>\n"
            for box, label, difficult in zip(
                truth["boxes"], truth["labels"], truth["difficult"], strict=True
            )
        )
        (year / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename>"
            f"<size><width>{IMAGE_WIDTH}</width><height>{IMAGE_HEIGHT}</height>"
            f"<depth>3</depth></size><segmented>0</segmented>\n{objects}</annotation>\n",
            encoding="utf-8",
        )
        (year / "JPEGImages" / f"{image_id}.jpg").write_bytes(placeholder)
    (year / "ImageSets" / "Main" / "test.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")

    results = root / "results"
    results.mkdir(exist_ok=True)
    for label, name in enumerate(CLASS_NAMES, start=1):
        with (results / f"comp4_det_test_{name}.txt").open("w", encoding="utf-8") as file:
            for image_id, detection in zip(ids, detections, strict=True):
                mask = detection["labels"] == label
                for score, box in zip(
                    detection["scores"][mask], detection["boxes"][mask], strict=True
                ):
                    file.write(
                        f"{image_id} {score:.6f} {box[0]:.1f} {box[1]:.1f} {box[2]:.1f} "
                        f"{box[3]:.1f}\n"
                    )
    config = root / "config.yaml"
    config.write_text(
        json.dumps(
            {
                "model": {"num_classes": NUM_CLASSES + 1},
                "data": {
                    "dataset": "voc",
                    "root": str(root / "VOCdevkit"),
                    "val_sets": ["2007/test"],
                    "class_names": CLASS_NAMES,
                    "num_workers": 0,
                },
                "train": {"output_dir": str(root / "run")},
            }
        ),
        encoding="utf-8",
    )
    return config, results


def parse_voc_xml_classic(path: Path) -> list[dict]:
    """voc_eval.py's ``parse_rec``: the objects of one annotation file."""
    objects = []
    for element in ElementTree.parse(path).findall("object"):
        box = element.find("bndbox")
        objects.append(
            {
                "name": element.find("name").text,
                "difficult": int(element.find("difficult").text),
                "bbox": [int(box.find(tag).text) for tag in ("xmin", "ymin", "xmax", "ymax")],
            }
        )
    return objects


def classic_voc_eval(results: Path, annotations: dict[str, list[dict]]) -> float:
    """voc_eval.py over every class (VOC07 11-point): each results file read line by line,
    then the per-detection loop. ``annotations`` maps image id -> parsed objects."""
    index_of = {image_id: index for index, image_id in enumerate(annotations)}
    aps = []
    for name in CLASS_NAMES:
        gt_images, gt_boxes, gt_difficult = [], [], []
        for image_id, objects in annotations.items():
            for item in objects:
                if item["name"] == name:
                    gt_images.append(index_of[image_id])
                    gt_boxes.append(item["bbox"])
                    gt_difficult.append(bool(item["difficult"]))
        lines = (results / f"comp4_det_test_{name}.txt").read_text(encoding="utf-8").splitlines()
        split = [line.strip().split(" ") for line in lines]
        det_images = np.array([index_of[parts[0]] for parts in split])
        det_scores = np.array([float(parts[1]) for parts in split])
        det_boxes = np.array([[float(value) for value in parts[2:]] for parts in split])
        aps.append(
            classic_voc_ap(
                det_images,
                det_scores,
                det_boxes.reshape(-1, 4),
                np.array(gt_images),
                np.array(gt_boxes, dtype=np.float64).reshape(-1, 4),
                np.array(gt_difficult, dtype=bool),
            )
        )
    return float(np.mean(aps))


def whole_command(args: argparse.Namespace) -> None:
    ground_truth, detections = synthetic_voc(args.images, args.detections_per_image)
    with tempfile.TemporaryDirectory(dir=args.workdir) as directory:
        root = Path(directory)
        config, results = write_devkit(root, ground_truth, detections)
        annotation_dir = root / "VOCdevkit" / "VOC2007" / "Annotations"
        ids = [f"{index:06d}" for index in range(len(ground_truth))]
        annotations: dict[str, list[dict]] = {}

        def parse() -> None:
            annotations.update(
                (image_id, parse_voc_xml_classic(annotation_dir / f"{image_id}.xml"))
                for image_id in ids
            )

        [parse_seconds] = time_interleaved({"parse": parse}, warmup=0, repeats=1)["parse"]
        command = [sys.executable, "test.py", "--config", str(config), "--eval-only", str(results)]
        maps = {}
        # Alternating rounds: ours, classic, ours, classic, ...
        seconds = time_interleaved(
            {
                "ours": lambda: subprocess.run(
                    command, cwd=REPO_ROOT, check=True, capture_output=True
                ),
                "classic": lambda: maps.update(classic=classic_voc_eval(results, annotations)),
            },
            warmup=0,
            repeats=args.rounds,
        )
        ours, classic, classic_map = seconds["ours"], seconds["classic"], maps["classic"]
        our_map = json.loads((results / "metrics.json").read_text(encoding="utf-8"))["mAP"]
    ours_median, classic_median = statistics.median(ours), statistics.median(classic)
    print(f"command: {' '.join(command[1:])} (from {REPO_ROOT})")
    print(
        f"test.py --eval-only, whole command  {ours_median:6.2f} s  "
        f"(runs: {', '.join(f'{value:.2f}' for value in ours)})  mAP {our_map:.8f}"
    )
    print(
        f"classic voc_eval.py loop          {classic_median:6.2f} s  "
        f"(runs: {', '.join(f'{value:.2f}' for value in classic)})  mAP {classic_map:.8f}"
    )
    print(f"classic XML parsing (first run)   {parse_seconds:6.2f} s  (not in the loop's time)")
    print(f"ours / classic loop = {ours_median / classic_median:.3f}")
    print(f"|mAP difference| = {abs(our_map - classic_map):.2e}")


def in_memory(args: argparse.Namespace) -> None:
    ground_truth, detections = synthetic_voc(args.images, args.detections_per_image)
    total = sum(len(item["scores"]) for item in detections)
    objects = sum(len(item["labels"]) for item in ground_truth)
    print(f"{args.images} images, {objects} objects, {total} detections, {NUM_CLASSES} classes")
    results = {}

    def vectorised_run() -> None:
        results["vectorised"] = evaluate_voc(
            ground_truth, detections, CLASS_NAMES, use_07_metric=True, inclusive=True
        )["mAP"]

    def classic_run() -> None:
        aps = [
            classic_class_ap(ground_truth, detections, label) for label in range(1, NUM_CLASSES + 1)
        ]
        results["classic"] = float(np.mean(aps))

    runs = {"vectorised": vectorised_run}
    if not args.skip_classic:
        runs["classic"] = classic_run
    seconds = {
        name: times[0] for name, times in time_interleaved(runs, warmup=0, repeats=1).items()
    }
    vectorised = seconds["vectorised"]
    print(f"vectorised evaluator   {vectorised:7.2f} s   mAP {results['vectorised']:.6f}")
    if args.skip_classic:
        return
    classic = seconds["classic"]
    print(f"classic per-detection  {classic:7.2f} s   mAP {results['classic']:.6f}")
    print(f"speed-up               {classic / vectorised:7.1f}x")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(__doc__.split("\n\n")[0], __doc__)
    parser.add_argument("--images", type=int, default=4952, help="images in the result set")
    parser.add_argument(
        "--detections-per-image", type=int, default=200, help="detections per image"
    )
    parser.add_argument(
        "--skip-classic", action="store_true", help="in memory: time the vectorised evaluator only"
    )
    parser.add_argument(
        "--whole-command",
        action="store_true",
        help="time test.py --eval-only from the shell against voc_eval.py on files",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="--whole-command: alternating rounds (default 3)"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="--whole-command: where the set is written"
    )
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    if args.whole_command:
        whole_command(args)
    else:
        in_memory(args)
    return 0


if __name__ == "__main__":
    run_command(main, parse_args)
