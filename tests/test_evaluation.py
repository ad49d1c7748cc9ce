import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import test as test_script
import train
from data.records import AnnotationRecord
from data.voc import VOC_CLASSES
from engine.evaluation import (
    COCO_STAT_NAMES,
    Evaluator,
    coco_ground_truth,
    coco_results,
    finite_json,
    read_voc_results_arrays,
    score_coco,
    score_voc_results,
    voc_results_arrays,
    write_voc_results,
)
from tests.conftest import REPO_ROOT, tiny_train_overrides
from tests.test_data import voc_mini, voc_mini_coco
from tests.voc_devkit_reference import devkit_ap


def shared_coco_detections(shared_dir):
    """coco_dets_raw.json mapped onto the ground truth's image and category ids."""
    root = shared_dir / "data" / "voc_mini"
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(root / "annotations" / "instances_voc_mini.json"))
    raw = json.loads((root / "detections" / "coco_dets_raw.json").read_text())
    image_of_file = {image["file_name"]: image["id"] for image in truth.dataset["images"]}
    category_of_name = {
        category["name"]: category["id"] for category in truth.dataset["categories"]
    }
    raw_file = {image["id"]: image["file_name"] for image in raw["images"]}
    raw_name = {category["id"]: category["name"] for category in raw["categories"]}
    entries = [
        {
            "image_id": image_of_file[raw_file[item["image_id"]]],
            "category_id": category_of_name[raw_name[item["category_id"]]],
            "bbox": item["bbox"],
            "score": item["score"],
        }
        for item in raw["annotations"]
    ]
    return truth, entries


def test_coco_numbers_equal_pycocotools_run_directly(shared_dir):
    truth, entries = shared_coco_detections(shared_dir)
    with contextlib.redirect_stdout(io.StringIO()):
        direct = COCOeval(truth, truth.loadRes(entries), "bbox")
        direct.evaluate()
        direct.accumulate()
        direct.summarize()
    ours = score_coco(truth, entries, VOC_CLASSES)
    for name, value in zip(COCO_STAT_NAMES, direct.stats, strict=True):
        assert ours[name] == value, name
    assert ours["mAP"] == direct.stats[0] and ours["metric"] == "coco"
    # Per class (our slice of the precision array) against pycocotools evaluating that
    # one category on its own and summarising it.
    category_of_name = {category["name"]: key for key, category in truth.cats.items()}
    for name in VOC_CLASSES:
        with contextlib.redirect_stdout(io.StringIO()):
            single = COCOeval(truth, truth.loadRes(entries), "bbox")
            single.params.catIds = [category_of_name[name]]
            single.evaluate()
            single.accumulate()
            single.summarize()
        assert ours["ap_per_class"][name] == pytest.approx(single.stats[0], abs=1e-12), name
    assert 0.0 < min(ours["ap_per_class"].values()) < max(ours["ap_per_class"].values()) < 1.0
    # Per IoU threshold: pycocotools' own AP50 and AP75 at 0.50 and 0.75, AP their mean.
    per_iou = ours["ap_per_iou"]
    assert list(per_iou) == [f"{0.5 + 0.05 * index:.2f}" for index in range(10)]
    assert per_iou["0.50"] == pytest.approx(direct.stats[1], abs=1e-12)
    assert per_iou["0.75"] == pytest.approx(direct.stats[2], abs=1e-12)
    assert sum(per_iou.values()) / 10 == pytest.approx(direct.stats[0], abs=1e-12)


def test_coco_ground_truth_of_voc_records_makes_difficult_objects_crowd(shared_dir):
    records = voc_mini(shared_dir)
    difficult = [
        (index, record.boxes[j], record.labels[j])
        for index, record in enumerate(records)
        for j in np.flatnonzero(record.difficult)
    ]
    assert len(difficult) > 0
    truth = coco_ground_truth(records, VOC_CLASSES)
    annotations = truth["annotations"]
    assert len(annotations) == sum(record.num_objects for record in records)
    assert sum(item["iscrowd"] for item in annotations) == len(difficult)
    first = records[0]
    x1, y1, x2, y2 = (float(value) for value in first.boxes[0])
    assert annotations[0]["bbox"] == [x1, y1, x2 - x1, y2 - y1]
    assert annotations[0]["area"] == pytest.approx((x2 - x1) * (y2 - y1))
    assert annotations[0]["category_id"] == int(first.labels[0])
    assert [image["width"] for image in truth["images"]] == [r.width for r in records]

    # Scored as COCO: a detection exactly on a difficult box changes nothing (COCOeval
    # ignores detections matched to crowd boxes), one on an ordinary box does.
    evaluator = Evaluator(metric="coco", records=records, class_names=VOC_CLASSES)
    empty = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, np.int64)}

    def scored(hits):
        detections = [dict(empty) for _ in records]
        for index, box, label in hits:
            detections[index] = {
                "boxes": box[None].astype(np.float64),
                "scores": np.array([0.9]),
                "labels": np.array([label]),
            }
        return evaluator.score(detections)

    ordinary = next((i, r.boxes[j], r.labels[j]) for i, r in enumerate(records)
                    for j in range(r.num_objects) if not r.difficult[j])  # fmt: skip
    base = scored([ordinary])
    with_difficult = scored([ordinary, difficult[0]])
    assert base["mAP"] > 0 and with_difficult["mAP"] == base["mAP"]
    assert with_difficult["AR100"] == base["AR100"]


def test_coco_results_from_records_round_trip(shared_dir):
    """Detections as test.py holds them (per record, xyxy) give the same numbers."""
    truth, entries = shared_coco_detections(shared_dir)
    records = voc_mini_coco(shared_dir)
    name_of = {category["id"]: category["name"] for category in truth.dataset["categories"]}
    position = {record.extra["coco_id"]: index for index, record in enumerate(records)}
    detections = [{"boxes": [], "scores": [], "labels": []} for _ in records]
    for entry in entries:
        x, y, w, h = entry["bbox"]
        item = detections[position[entry["image_id"]]]
        item["boxes"].append([x, y, x + w, y + h])
        item["scores"].append(entry["score"])
        item["labels"].append(VOC_CLASSES.index(name_of[entry["category_id"]]) + 1)
    detections = [{key: np.asarray(value) for key, value in item.items()} for item in detections]
    category_ids = [next(i for i, n in name_of.items() if n == name) for name in VOC_CLASSES]
    converted = coco_results(detections, [r.extra["coco_id"] for r in records], category_ids)
    direct = score_coco(truth, entries, VOC_CLASSES)
    again = score_coco(truth, converted, VOC_CLASSES)
    for name in COCO_STAT_NAMES:
        assert again[name] == pytest.approx(direct[name], abs=1e-4)


def shared_voc_detections(shared_dir, records):
    """per_image_xyxy/*.txt (class_index score x1 y1 x2 y2, devkit pixels) per record."""
    folder = shared_dir / "data" / "voc_mini" / "detections"
    names = (folder / "class_names.txt").read_text().split()
    detections = []
    for record in records:
        path = folder / "per_image_xyxy" / f"{record.image_id}.txt"
        rows = np.loadtxt(path, ndmin=2) if path.is_file() else np.zeros((0, 6))
        labels = np.array(
            [VOC_CLASSES.index(names[int(i)]) + 1 for i in rows[:, 0]], dtype=np.int64
        )
        detections.append({"labels": labels, "scores": rows[:, 1], "boxes": rows[:, 2:6]})
    return detections


@pytest.mark.parametrize("use_07_metric", [True, False])
def test_voc_numbers_equal_an_independent_computation(shared_dir, tmp_path, use_07_metric):
    records = voc_mini(shared_dir)
    devkit = shared_voc_detections(shared_dir, records)
    # test.py holds 0-based continuous boxes; the files it writes are devkit pixels.
    continuous = [{**item, "boxes": item["boxes"] - np.array([1, 1, 0, 0])} for item in devkit]
    write_voc_results(records, continuous, VOC_CLASSES, tmp_path)
    result = score_voc_results(
        read_voc_results_arrays(tmp_path, records, VOC_CLASSES),
        records,
        VOC_CLASSES,
        use_07_metric=use_07_metric,
    )
    aps = []
    for label, name in enumerate(VOC_CLASSES, start=1):
        det_images = np.concatenate(
            [np.full((item["labels"] == label).sum(), i) for i, item in enumerate(devkit)]
        )
        det_scores = np.concatenate([item["scores"][item["labels"] == label] for item in devkit])
        det_boxes = np.concatenate([item["boxes"][item["labels"] == label] for item in devkit])
        gt = [
            (i, r.boxes[r.labels == label] + np.array([1, 1, 0, 0]), r.difficult[r.labels == label])
            for i, r in enumerate(records)
        ]
        gt_images = np.concatenate([np.full(len(boxes), i) for i, boxes, _ in gt])
        gt_boxes = np.concatenate([boxes for _, boxes, _ in gt])
        gt_difficult = np.concatenate([difficult for _, _, difficult in gt])
        expected = devkit_ap(det_images, det_scores, det_boxes, gt_images, gt_boxes,
                                  gt_difficult, use_07_metric=use_07_metric)  # fmt: skip
        assert result["ap_per_class"][name] == pytest.approx(expected, abs=1e-9), name
        aps.append(expected)
    assert result["mAP"] == pytest.approx(np.mean(aps), abs=1e-9)
    # The files hold 1-based pixels and read back to exactly what voc_results_arrays
    # makes of the detections (the arrays training-time evaluation scores).
    read = read_voc_results_arrays(tmp_path, records, VOC_CLASSES)
    direct = voc_results_arrays(continuous)
    assert read["images"].size == direct["images"].size == sum(len(d["scores"]) for d in devkit)

    def rows(flat):
        table = np.column_stack([flat["images"], flat["labels"], flat["scores"], flat["boxes"]])
        return table[np.lexsort(table.T[::-1])]

    np.testing.assert_allclose(rows(read), rows(direct), rtol=1e-7)
    devkit_flat = {
        "images": np.concatenate([np.full(len(d["scores"]), i) for i, d in enumerate(devkit)]),
        **{key: np.concatenate([d[key] for d in devkit]) for key in ("labels", "scores", "boxes")},
    }
    np.testing.assert_allclose(rows(direct), rows(devkit_flat), rtol=1e-12)


def _results_dir(tmp_path, lines_by_class):
    for name in ("a", "b"):
        (tmp_path / f"comp4_det_test_{name}.txt").write_text(lines_by_class.get(name, ""))
    return tmp_path


def _record(image_id):
    return AnnotationRecord(
        image_id=image_id, image_path=Path(f"{image_id}.jpg"), width=100, height=100,
        boxes=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64),
        difficult=np.zeros(0, bool), source="test",
    )  # fmt: skip


def test_results_reader_takes_any_spacing_and_blank_lines(tmp_path):
    text = "img1 0.5 1 2 3 4\r\n\n  img2\t0.25  5 6 7 8.5 \nimg1 1e-3 0 0 10 10"
    directory = _results_dir(tmp_path, {"a": text, "b": ""})
    flat = read_voc_results_arrays(directory, [_record("img1"), _record("img2")], ["a", "b"])
    np.testing.assert_array_equal(flat["images"], [0, 1, 0])
    np.testing.assert_array_equal(flat["scores"], [0.5, 0.25, 1e-3])
    np.testing.assert_array_equal(flat["boxes"], [[1, 2, 3, 4], [5, 6, 7, 8.5], [0, 0, 10, 10]])
    np.testing.assert_array_equal(flat["labels"], [1, 1, 1])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("img1 0.5 1 2 3 4\nimg1 0.5 1 2 3\n", r"comp4_det_test_a.txt:2: expected 'image_id"),
        ("img1 0.5 1 2 3\nimg1 0.5 1 2 3 4 5\n", r"comp4_det_test_a.txt:1: expected"),
        ("img1 0.5 1 2 3 4\n\nimg9 0.5 1 2 3 4\n", r"a.txt:3: image 'img9' is not in the data"),
        ("img1 0.5 1 2 3 4\nimg1 high 1 2 3 4\n", r"a.txt:2: non-numeric value"),
        ("img1 0.5 1 2 3 4\nimg1 nan 1 2 3 4\n", r"a.txt:2: .*'nan' is not a finite number"),
        ("img1 -inf 1 2 3 4\n", r"a.txt:1: .*'-inf' is not a finite number"),
        ("img1 0.5 1 2 1e999 4\n", r"a.txt:1: .*'1e999' is not a finite number"),
    ],
)
def test_results_reader_names_the_first_bad_line(tmp_path, text, message):
    directory = _results_dir(tmp_path, {"a": text})
    with pytest.raises(ValueError, match=message):
        read_voc_results_arrays(directory, [_record("img1")], ["a", "b"])


def test_test_script_writes_results_and_rescores_them(tiny_shapes_root, tmp_path, capsys):
    output = tmp_path / "run"
    config = str(REPO_ROOT / "configs" / "quickstart_shapes.yaml")
    assert (
        train.main(
            train.parse_args(["--config", config, *tiny_train_overrides(tiny_shapes_root, output)])
        )
        == 0
    )
    results = tmp_path / "eval"
    code = test_script.main(
        test_script.parse_args(
            ["--checkpoint", str(output / "best.pt"), "--results-dir", str(results)]
        )
    )
    assert code == 0
    metrics = json.loads((results / "metrics.json").read_text())
    assert metrics["metric"] == "voc07"
    assert set(metrics["ap_per_class"]) == {"ellipse", "rectangle", "triangle", "star", "cross"}
    assert {"forward_ms", "postprocess_ms", "fps"} <= set(metrics["speed"])
    assert len(list(results.glob("comp4_det_test_*.txt"))) == 5
    assert (results / "pr_curves.png").stat().st_size > 0
    lines = (results / "comp4_det_test_star.txt").read_text().splitlines()
    assert all(len(line.split()) == 6 for line in lines)
    # The mAP of training's last evaluation, from the written files.
    trained = json.loads((output / "results.json").read_text())
    assert metrics["mAP"] == pytest.approx(trained["best_mAP"], abs=1e-9)
    assert (
        test_script.main(
            test_script.parse_args(
                [
                    "--config",
                    config,
                    *tiny_train_overrides(tiny_shapes_root, output),
                    "--eval-only",
                    str(results),
                    "--no-plots",
                ]
            )
        )
        == 0
    )
    assert json.loads((results / "metrics.json").read_text())["mAP"] == metrics["mAP"]
    # Folding BatchNorm and NHWC activations change nothing but float rounding.
    folded = tmp_path / "folded"
    arguments = ["--checkpoint", str(output / "best.pt"), "--results-dir", str(folded)]
    arguments += ["--fold-bn", "--channels-last", "--no-plots"]
    assert test_script.main(test_script.parse_args(arguments)) == 0
    folded_map = json.loads((folded / "metrics.json").read_text())["mAP"]
    assert folded_map == pytest.approx(metrics["mAP"], abs=1e-3)
    assert "mAP" in capsys.readouterr().out
    # The end-to-end ONNX graph gives PyTorch's detections, so PyTorch's mAP; its int8
    # version runs through the same command (calibrated on 4 training images).
    import onnxruntime  # noqa: F401  (requirements-dev.txt: missing fails, not skips)

    for extra in ([], ["--int8", "--calibration-images", "4"]):
        directory = tmp_path / f"onnxruntime{len(extra)}"
        arguments = ["--checkpoint", str(output / "best.pt"), "--results-dir", str(directory)]
        arguments += ["--no-plots", "--backend", "onnxruntime", *extra]
        assert test_script.main(test_script.parse_args(arguments)) == 0
        onnx_metrics = json.loads((directory / "metrics.json").read_text())
        assert onnx_metrics["speed"]["device"] == f"cpu, onnxruntime{' int8' if extra else ''}"
        if not extra:
            assert onnx_metrics["mAP"] == pytest.approx(metrics["mAP"], abs=1e-6)
        # The results files it wrote score to the mAP it printed.
        rescored = tmp_path / f"rescored{len(extra)}"
        arguments = ["--checkpoint", str(output / "best.pt"), "--eval-only", str(directory),
                     "--results-dir", str(rescored), "--no-plots"]  # fmt: skip
        assert test_script.main(test_script.parse_args(arguments)) == 0
        rescored_map = json.loads((rescored / "metrics.json").read_text())["mAP"]
        assert rescored_map == pytest.approx(onnx_metrics["mAP"], abs=1e-9)


def test_coco_metric_during_training_equals_test_script(tiny_shapes_root, tmp_path, capsys):
    """eval.metric=coco on VOC-format data: training's evaluation and test.py score the
    same checkpoint through the same Evaluator (ground truth built from the records)."""
    output = tmp_path / "run"
    overrides = [*tiny_train_overrides(tiny_shapes_root, output), "eval.metric=coco"]
    config = str(REPO_ROOT / "configs" / "quickstart_shapes.yaml")
    assert train.main(train.parse_args(["--config", config, *overrides])) == 0
    trained = json.loads((output / "results.json").read_text())
    assert trained["metric"] == "coco"
    assert set(trained["ap_per_class"]) == {"ellipse", "rectangle", "triangle", "star", "cross"}
    evals = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert len([record for record in evals if record["kind"] == "eval"]) == 3

    results = tmp_path / "eval"
    arguments = ["--checkpoint", str(output / "last.pt"), "--results-dir", str(results)]
    assert test_script.main(test_script.parse_args([*arguments, "--no-plots"])) == 0
    metrics = json.loads((results / "metrics.json").read_text())
    assert metrics["metric"] == "coco" and set(COCO_STAT_NAMES) <= set(metrics)
    assert metrics["mAP"] == trained["mAP"]
    assert metrics["AP50"] > 0  # detections do land on objects: the equality means something
    entries = json.loads((results / "detections_coco.json").read_text())
    assert {entry["image_id"] for entry in entries} <= set(range(6))

    # No detections at all (every score under the threshold): every class AP is 0,
    # metrics.json is strict JSON and the table says why.
    empty = tmp_path / "empty"
    arguments = ["--checkpoint", str(output / "last.pt"), "--out", str(empty), "--no-plots"]
    assert (
        test_script.main(test_script.parse_args([*arguments, "postprocess.score_threshold=1.0"]))
        == 0
    )
    printed = capsys.readouterr().out
    assert "no detections: every AP is 0" in printed

    def refuse(constant):
        raise AssertionError(f"metrics.json holds {constant}")

    metrics = json.loads((empty / "metrics.json").read_text(), parse_constant=refuse)
    assert metrics["mAP"] == 0.0 and set(metrics["ap_per_class"].values()) == {0.0}
    assert metrics["note"].startswith("no detections")
    json.loads((output / "results.json").read_text(), parse_constant=refuse)


def test_undefined_values_are_null_in_the_json_files():
    content = {"mAP": 0.5, "ap_per_class": {"a": float("nan"), "b": 1.0}, "x": [float("inf")]}
    assert json.loads(finite_json(content)) == {
        "mAP": 0.5,
        "ap_per_class": {"a": None, "b": 1.0},
        "x": [None],
    }
