import numpy as np
import pytest
import torch
from torchvision.ops import box_area, box_iou

from utils.boxes import (
    IouRows,
    box_area_np,
    box_iou_np,
    pairwise_intersection,
    xywh_to_xyxy,
    xyxy_to_xywh,
)


def random_boxes(rng, count):
    corners = rng.uniform(0, 50, (count, 2))
    return np.concatenate([corners, corners + rng.uniform(0, 30, (count, 2))], axis=1)


def test_iou_by_hand():
    a = np.array([0.0, 0.0, 10.0, 10.0])
    b = np.array([5.0, 0.0, 15.0, 10.0])
    assert box_iou_np(a, b) == pytest.approx(50 / 150)
    # The devkit's inclusive pixels: 11 x 11 boxes overlapping 6 x 11.
    assert box_iou_np(a, b, inclusive=True) == pytest.approx(66 / (121 + 121 - 66))
    assert box_iou_np(a, np.array([20.0, 20, 30, 30])) == 0.0
    # Two empty boxes: no union, IoU 0 rather than NaN.
    assert box_iou_np(np.zeros(4), np.zeros(4)) == 0.0


def test_numpy_iou_matches_torchvision_rows_and_matrix():
    rng = np.random.default_rng(0)
    a, b = random_boxes(rng, 30), random_boxes(rng, 20)
    expected = box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(box_iou_np(a[:, None], b[None]), expected, rtol=1e-12, atol=0)
    np.testing.assert_allclose(box_iou_np(a[:20], b), np.diag(expected[:20]), rtol=1e-12)
    np.testing.assert_allclose(box_area_np(a), box_area(torch.from_numpy(a)).numpy())
    # float32 in, float32 out (the augmentation's crop test compares in float32).
    assert box_iou_np(a.astype(np.float32), b[0].astype(np.float32)).dtype == np.float32


def test_iou_rows_equal_the_matrix_value_for_value():
    rng = np.random.default_rng(2)
    boxes = random_boxes(rng, 40).astype(np.float32)
    boxes[5] = boxes[6] = [3.0, 3.0, 3.0, 3.0]  # two empty boxes at one point: IoU 0
    matrix = box_iou_np(boxes[:, None], boxes[None])
    rows = IouRows(boxes)
    for index in (0, 5, 17, 39):
        row = rows(index)
        assert row.dtype == np.float32 and np.array_equal(row, matrix[index])
    assert rows(5)[6] == 0.0 and rows(0)[0] == 1.0


def test_batched_intersection_matches_torchvision():
    rng = np.random.default_rng(1)
    boxes = torch.from_numpy(np.stack([random_boxes(rng, 12) for _ in range(3)]))  # [3, 12, 4]
    inter = pairwise_intersection(boxes, boxes)  # [3, 12, 12]
    for row in range(3):
        area = box_area(boxes[row])
        union = area[:, None] + area[None] - inter[row]
        torch.testing.assert_close(inter[row] / union, box_iou(boxes[row], boxes[row]))


def test_xywh_round_trip():
    rng = np.random.default_rng(2)
    boxes = random_boxes(rng, 10)
    xywh = xyxy_to_xywh(boxes)
    np.testing.assert_array_equal(xywh[:, :2], boxes[:, :2])
    np.testing.assert_allclose(xywh[:, 2:], boxes[:, 2:] - boxes[:, :2])
    np.testing.assert_allclose(xywh_to_xyxy(xywh), boxes, rtol=0, atol=1e-12)
    assert xyxy_to_xywh(np.array([1.0, 2.0, 4.0, 8.0])).tolist() == [1.0, 2.0, 3.0, 6.0]
