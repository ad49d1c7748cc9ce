import numpy as np
import pytest

from tests.voc_devkit_reference import devkit_ap
from utils.metrics import evaluate_class, evaluate_voc


@pytest.mark.parametrize("use_07_metric", [True, False])
@pytest.mark.parametrize("inclusive", [True, False])
def test_vectorised_evaluator_equals_the_devkit_loop(use_07_metric, inclusive):
    rng = np.random.default_rng(0)
    for _ in range(25):
        num_gt, num_det = int(rng.integers(1, 150)), int(rng.integers(0, 400))
        gt_images = rng.integers(0, 40, num_gt)
        corners = rng.uniform(0, 80, (num_gt, 2))
        gt_boxes = np.concatenate([corners, corners + rng.uniform(5, 60, (num_gt, 2))], 1).round()
        gt_difficult = rng.random(num_gt) < 0.15
        source = rng.integers(0, num_gt, num_det)
        det_images = np.where(
            rng.random(num_det) < 0.8, gt_images[source], rng.integers(0, 40, num_det)
        )
        det_boxes = gt_boxes[source] + rng.normal(0, 6, (num_det, 4)).round()
        det_scores = rng.random(num_det).round(2)  # ties on purpose
        arguments = (det_images, det_scores, det_boxes, gt_images, gt_boxes, gt_difficult)
        expected = devkit_ap(*arguments, use_07_metric=use_07_metric, inclusive=inclusive)
        result = evaluate_class(*arguments, use_07_metric=use_07_metric, inclusive=inclusive)
        assert result.ap == pytest.approx(expected, abs=1e-12)


def test_hand_built_cases():
    truth = [{"boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 30]]), "labels": np.array([1, 1]),
              "difficult": np.array([False, True])}]  # fmt: skip
    perfect = [
        {"boxes": np.array([[0, 0, 10, 10]]), "scores": np.array([0.9]), "labels": np.array([1])}
    ]
    assert evaluate_voc(truth, perfect, ["a"])["mAP"] == pytest.approx(1.0)
    # A duplicate of a found box is a false positive; the difficult box is ignored.
    duplicate = [{"boxes": np.array([[0, 0, 10, 10], [0, 0, 10, 10.5], [20, 20, 30, 30]]),
                  "scores": np.array([0.9, 0.8, 0.95]), "labels": np.array([1, 1, 1])}]  # fmt: skip
    result = evaluate_voc(truth, duplicate, ["a"], use_07_metric=False)
    curve = result["curves"]["a"]
    assert curve.precision.tolist() == [0.0, 1.0, 0.5]  # ignored, true, duplicate
    assert curve.recall.tolist() == [0.0, 1.0, 1.0]
    assert result["mAP"] == pytest.approx(1.0)
    # 11-point and area AP differ: recall 0.5 at precision 1, then nothing.
    half = [
        {"boxes": np.array([[0, 0, 10, 10]]), "scores": np.array([0.9]), "labels": np.array([1])}
    ]
    two = [{"boxes": np.array([[0, 0, 10, 10], [50, 50, 60, 60]]), "labels": np.array([1, 1]),
            "difficult": np.array([False, False])}]  # fmt: skip
    assert evaluate_voc(two, half, ["a"], use_07_metric=False)["mAP"] == pytest.approx(0.5)
    assert evaluate_voc(two, half, ["a"], use_07_metric=True)["mAP"] == pytest.approx(6 / 11)
    # Detections only on images without the class's boxes: all false positives, AP 0.
    second_image = [truth[0], {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, np.int64),
                               "difficult": np.zeros(0, bool)}]  # fmt: skip
    elsewhere = [{"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0)},
                 perfect[0]]  # fmt: skip
    for use_07_metric in (True, False):
        result = evaluate_voc(second_image, elsewhere, ["a"], use_07_metric=use_07_metric)
        assert result["mAP"] == 0.0 and result["curves"]["a"].precision.tolist() == [0.0]
    # A class without ground truth gets NaN and stays out of the mean.
    result = evaluate_voc(truth, perfect, ["a", "b"])
    assert np.isnan(result["ap_per_class"]["b"]) and result["mAP"] == pytest.approx(1.0)


def test_devkit_reference_and_evaluator_on_hand_computed_curves():
    # Three boxes; ranked detections: a hit, a miss (no overlap), a hit.
    # recall 1/3, 1/3, 2/3; precision 1, 1/2, 2/3.
    gt_boxes = np.array([[0, 0, 9, 9], [20, 0, 29, 9], [40, 0, 49, 9]], dtype=float)
    arguments = (
        np.zeros(3, int), np.array([0.9, 0.8, 0.7]),
        np.array([[0, 0, 9, 9], [60, 60, 69, 69], [20, 0, 29, 9]], dtype=float),
        np.zeros(3, int), gt_boxes, np.zeros(3, bool),
    )  # fmt: skip
    # 11-point: levels 0..0.3 reach precision 1, levels 0.4..0.6 reach 2/3.
    assert devkit_ap(*arguments, use_07_metric=True) == pytest.approx(6 / 11, abs=1e-15)
    assert evaluate_class(*arguments, inclusive=True).ap == pytest.approx(6 / 11, abs=1e-15)
    # Area: 1/3 at precision 1, then 1/3 at the envelope's 2/3.
    assert devkit_ap(*arguments, use_07_metric=False) == pytest.approx(5 / 9, abs=1e-15)
    result = evaluate_class(*arguments, inclusive=True, use_07_metric=False)
    assert result.ap == pytest.approx(5 / 9, abs=1e-15)


def test_eleven_point_levels_are_the_devkits_floats():
    # Recall stops at exactly 3/10; the devkit's third level is 0.30000000000000004, so
    # only levels 0, 0.1 and 0.2 count: AP 3/11, not 4/11.
    gt_boxes = np.array([[20 * i, 0, 20 * i + 9, 9] for i in range(10)], dtype=float)
    arguments = (
        np.zeros(3, int), np.array([0.9, 0.8, 0.7]), gt_boxes[:3],
        np.zeros(10, int), gt_boxes, np.zeros(10, bool),
    )  # fmt: skip
    assert devkit_ap(*arguments) == pytest.approx(3 / 11, abs=1e-15)
    assert evaluate_class(*arguments, inclusive=True).ap == pytest.approx(3 / 11, abs=1e-15)
