"""The previous release's SSD augmentation, step by step on full-resolution images, kept
as the oracle for data.transforms.SSDAugmentation (geometry first, one warp, colour on
the output). It draws from ``rng`` in the same order, so one seed gives both the same
zoom-out, crop and flip. Nothing here is imported from data.transforms."""

from __future__ import annotations

import cv2
import numpy as np

MEAN = (123, 117, 104)


def reference_augmentation(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    size: int,
    photometric_prob: float = 0.5,
    expand_prob: float = 0.5,
    expand_max_ratio: float = 4.0,
    crop_prob: float = 1.0,
    crop_min_ious=(None, 0.1, 0.3, 0.5, 0.7, 0.9),
    flip_prob: float = 0.5,
):
    """(image [size, size, 3], normalised boxes, labels, the crop window in canvas pixels
    or None)."""
    boxes = boxes.astype(np.float32)
    image = photometric(image, rng, photometric_prob)
    if rng.random() < expand_prob:
        height, width = image.shape[:2]
        ratio = rng.uniform(1.0, expand_max_ratio)
        canvas_h, canvas_w = int(height * ratio), int(width * ratio)
        top = int(rng.uniform(0, canvas_h - height))
        left = int(rng.uniform(0, canvas_w - width))
        canvas = np.empty((canvas_h, canvas_w, 3), dtype=np.uint8)
        canvas[:] = MEAN
        canvas[top : top + height, left : left + width] = image
        image, boxes = canvas, boxes + np.array([left, top, left, top], dtype=np.float32)
    window = None
    if len(boxes) and rng.random() < crop_prob:
        image, boxes, labels, window = crop(image, boxes, labels, rng, crop_min_ious)
    if rng.random() < flip_prob:
        width = image.shape[1]
        flipped = boxes.copy()
        flipped[:, 0], flipped[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
        image, boxes = image[:, ::-1], flipped
    height, width = image.shape[:2]
    resized = cv2.resize(np.ascontiguousarray(image), (size, size), interpolation=cv2.INTER_LINEAR)
    normalised = np.clip(boxes / np.array([width, height, width, height], np.float32), 0, 1)
    keep = ((normalised[:, 2] - normalised[:, 0]) > 0.1 / size) & (
        (normalised[:, 3] - normalised[:, 1]) > 0.1 / size
    )
    return resized, normalised[keep], labels[keep], window


def photometric(image, rng, p):
    """In float32 at full resolution: brightness, contrast, saturation, hue, contrast."""
    if p <= 0:
        return image
    result = image.astype(np.float32)
    if rng.random() < p:
        result += rng.uniform(-32, 32)
    contrast_first = rng.random() < 0.5
    if contrast_first and rng.random() < p:
        result *= rng.uniform(0.5, 1.5)
    saturation = rng.uniform(0.5, 1.5) if rng.random() < p else None
    hue = rng.uniform(-18, 18) if rng.random() < p else None
    if saturation is not None or hue is not None:
        hsv = cv2.cvtColor(np.clip(result, 0, 255) / 255.0, cv2.COLOR_RGB2HSV)
        if saturation is not None:
            hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0.0, 1.0)
        if hue is not None:
            hsv[..., 0] = (hsv[..., 0] + hue) % 360.0
        result = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0
    if not contrast_first and rng.random() < p:
        result *= rng.uniform(0.5, 1.5)
    return np.clip(result, 0, 255).astype(np.uint8)


def crop(image, boxes, labels, rng, min_ious):
    height, width = image.shape[:2]
    min_iou = min_ious[int(rng.integers(len(min_ious)))]
    for _ in range(50):
        crop_w = rng.uniform(0.3, 1.0) * width
        crop_h = rng.uniform(0.3, 1.0) * height
        if not 0.5 <= crop_h / crop_w <= 2.0:
            continue
        left = rng.uniform(0, width - crop_w)
        top = rng.uniform(0, height - crop_h)
        rect = np.round(np.array([left, top, left + crop_w, top + crop_h], dtype=np.float32))
        if rect[2] - rect[0] < 1 or rect[3] - rect[1] < 1:
            continue
        inter_wh = np.clip(
            np.minimum(boxes[:, 2:], rect[2:]) - np.maximum(boxes[:, :2], rect[:2]), 0, None
        )
        inter = inter_wh.prod(axis=1)
        union = (boxes[:, 2:] - boxes[:, :2]).prod(axis=1) + (rect[2:] - rect[:2]).prod() - inter
        if min_iou is not None and (inter / union).max() < min_iou:
            continue
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        inside = (centres > rect[:2]).all(axis=1) & (centres < rect[2:]).all(axis=1)
        if not inside.any():
            continue
        kept = boxes[inside].copy()
        kept[:, :2] = np.maximum(kept[:, :2], rect[:2]) - rect[:2]
        kept[:, 2:] = np.minimum(kept[:, 2:], rect[2:]) - rect[:2]
        x1, y1, x2, y2 = (int(value) for value in rect)
        return image[y1:y2, x1:x2], kept, labels[inside], rect
    return image, boxes, labels, None
