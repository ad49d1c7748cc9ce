"""Box maths in one place: formats, areas, intersections and IoU.

Boxes are ``xyxy`` at every interface (STYLE.md); ``cxcywh`` exists for prior
generation and box coding, ``xywh`` for COCO files. Tensors use torchvision's
operators where one exists (:func:`box_iou`, ``box_convert``); the evaluators, the
augmentation and the data readers work on numpy arrays and use the numpy functions
here, which broadcast over leading dimensions.

``inclusive`` is the VOC devkit's pixel convention: a box from pixel ``x1`` to pixel
``x2`` covers ``x2 - x1 + 1`` pixels.

torch is imported by the tensor functions when they run, not with the module: the
results-file scorer (``test.py --eval-only``) uses the numpy ones without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "box_area_np",
    "box_iou",
    "box_iou_np",
    "cxcywh_to_xyxy",
    "pairwise_intersection",
    "xywh_to_xyxy",
    "xyxy_to_cxcywh",
    "xyxy_to_xywh",
]


def xyxy_to_cxcywh(boxes_xyxy: Tensor) -> Tensor:
    """``[..., 4]`` (x1, y1, x2, y2) -> ``[..., 4]`` (cx, cy, w, h)."""
    return _convert(boxes_xyxy, in_fmt="xyxy", out_fmt="cxcywh")


def cxcywh_to_xyxy(boxes_cxcywh: Tensor) -> Tensor:
    """``[..., 4]`` (cx, cy, w, h) -> ``[..., 4]`` (x1, y1, x2, y2)."""
    return _convert(boxes_cxcywh, in_fmt="cxcywh", out_fmt="xyxy")


def box_iou(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """``[N, M]`` IoU of ``[N, 4]`` and ``[M, 4]`` xyxy tensors (torchvision's)."""
    from torchvision.ops import box_iou as torchvision_box_iou

    return torchvision_box_iou(boxes_a, boxes_b)


def _convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    from torchvision.ops import box_convert

    # torchvision's box_convert takes [N, 4]; flatten any leading dimensions.
    flat = boxes.reshape(-1, 4)
    return box_convert(flat, in_fmt=in_fmt, out_fmt=out_fmt).reshape(boxes.shape)


def xyxy_to_xywh(boxes_xyxy: np.ndarray) -> np.ndarray:
    """``[..., 4]`` (x1, y1, x2, y2) -> ``[..., 4]`` (x, y, w, h), COCO's ``bbox``."""
    boxes = np.asarray(boxes_xyxy)
    return np.concatenate([boxes[..., :2], boxes[..., 2:] - boxes[..., :2]], axis=-1)


def xywh_to_xyxy(boxes_xywh: np.ndarray) -> np.ndarray:
    """``[..., 4]`` (x, y, w, h) -> ``[..., 4]`` (x1, y1, x2, y2)."""
    boxes = np.asarray(boxes_xywh)
    return np.concatenate([boxes[..., :2], boxes[..., :2] + boxes[..., 2:]], axis=-1)


def box_area_np(boxes_xyxy: np.ndarray, *, inclusive: bool = False) -> np.ndarray:
    """``[...]`` areas of ``[..., 4]`` xyxy boxes (``inclusive``: the devkit's +1)."""
    extra = 1.0 if inclusive else 0.0
    return (boxes_xyxy[..., 2] - boxes_xyxy[..., 0] + extra) * (
        boxes_xyxy[..., 3] - boxes_xyxy[..., 1] + extra
    )


def box_iou_np(boxes_a: np.ndarray, boxes_b: np.ndarray, *, inclusive: bool = False) -> np.ndarray:
    """IoU of ``[..., 4]`` and ``[..., 4]`` xyxy boxes, broadcast against each other.

    Row-aligned pairs: ``box_iou_np(a, b)`` with ``a``, ``b`` ``[N, 4]`` gives ``[N]``;
    the matrix: ``box_iou_np(a[:, None], b[None])`` gives ``[N, M]``. An empty union
    (two empty boxes) gives 0.
    """
    extra = 1.0 if inclusive else 0.0
    width = np.minimum(boxes_a[..., 2], boxes_b[..., 2]) - np.maximum(
        boxes_a[..., 0], boxes_b[..., 0]
    )
    height = np.minimum(boxes_a[..., 3], boxes_b[..., 3]) - np.maximum(
        boxes_a[..., 1], boxes_b[..., 1]
    )
    inter = np.clip(width + extra, 0.0, None) * np.clip(height + extra, 0.0, None)
    union = (
        box_area_np(boxes_a, inclusive=inclusive)
        + box_area_np(boxes_b, inclusive=inclusive)
        - inter
    )
    inter, union = np.broadcast_arrays(inter, union)
    return np.divide(
        inter, union, out=np.zeros(inter.shape, np.result_type(inter, union)), where=union > 0
    )


class IouRows:
    """Row ``i`` of the IoU matrix of a set of ``[N, 4]`` xyxy boxes, one row at a time:
    ``rows(i)`` equals ``box_iou_np(boxes[i], boxes)`` value for value, with the areas
    and coordinate columns taken once instead of at every call (a third of the numpy
    calls: Soft-NMS asks for one row per box it takes)."""

    def __init__(self, boxes: np.ndarray) -> None:
        self.x1, self.y1, self.x2, self.y2 = (np.ascontiguousarray(boxes[:, k]) for k in range(4))
        self.areas = box_area_np(boxes)

    def __call__(self, index: int) -> np.ndarray:
        width = np.minimum(self.x2, self.x2[index]) - np.maximum(self.x1, self.x1[index])
        height = np.minimum(self.y2, self.y2[index]) - np.maximum(self.y1, self.y1[index])
        inter = np.maximum(width, 0.0) * np.maximum(height, 0.0)
        union = self.areas[index] + self.areas - inter
        return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def pairwise_intersection(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """``[..., N, M]`` intersection areas of ``[..., N, 4]`` and ``[..., M, 4]`` xyxy
    boxes (leading dimensions broadcast: a batch of rows at once, unlike
    torchvision's :func:`box_iou`)."""
    import torch

    top_left = torch.maximum(boxes_a[..., :, None, :2], boxes_b[..., None, :, :2])
    bottom_right = torch.minimum(boxes_a[..., :, None, 2:], boxes_b[..., None, :, 2:])
    sides = (bottom_right - top_left).clamp_(min=0)  # [..., N, M, 2]
    return sides[..., 0] * sides[..., 1]
