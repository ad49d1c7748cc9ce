"""SSD's training augmentation and the evaluation resize, on OpenCV and NumPy.

Every random decision is drawn from the ``rng`` passed in, so a sample's augmentation
is a function of (seed, epoch, index). Images are RGB uint8 ``[H, W, 3]``; boxes come
in as pixels ``[G, 4]`` xyxy and leave normalised to [0, 1] for the model input.
(OpenCV/NumPy measured faster per worker than ``torchvision.transforms.v2``:
``python -m tools.augment_benchmark``.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from utils.boxes import box_iou_np
from utils.pixels import MEAN_FILL_RGB


def _keep_valid(
    boxes: np.ndarray, labels: np.ndarray, min_size: float
) -> tuple[np.ndarray, np.ndarray]:
    keep = ((boxes[:, 2] - boxes[:, 0]) > min_size) & ((boxes[:, 3] - boxes[:, 1]) > min_size)
    return boxes[keep], labels[keep]


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """An ``[H, W, 3]`` image as the network sees it: ``[S, S, 3]``, bilinear, the
    aspect ratio not kept (SSD's input). Evaluation, inference, calibration and the
    tools all resize through here."""
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)


def resize_batch(
    images: Sequence[np.ndarray], size: int, *, channels_first: bool = False
) -> np.ndarray:
    """RGB ``uint8`` images of any sizes as one network input: ``[B, S, S, 3]``, or
    ``[B, 3, S, S]`` (contiguous) with ``channels_first`` (an ONNX graph's input)."""
    batch = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for index, image in enumerate(images):
        batch[index] = resize_image(image, size)
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2)) if channels_first else batch


def resize_to_model(
    image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resize to ``size x size``; boxes normalised by the image size and clipped."""
    height, width = image.shape[:2]
    resized = resize_image(image, size)
    scale = np.array([width, height, width, height], dtype=np.float32)
    normalised = np.clip(boxes.astype(np.float32) / scale, 0.0, 1.0)
    # Boxes under a tenth of a model pixel carry nothing learnable.
    normalised, labels = _keep_valid(normalised, labels, 0.1 / size)
    return resized, normalised, labels


class EvalTransform:
    """Resize only (evaluation and inference)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(
        self,
        image: np.ndarray,
        boxes: np.ndarray,
        labels: np.ndarray,
        rng: np.random.Generator | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return resize_to_model(image, boxes, labels, self.size)


class SSDAugmentation:
    """Photometric distortion, zoom-out, IoU-constrained crop, flip, resize.

    Args:
        size: model input side.
        photometric_prob: probability of each photometric step (brightness, contrast,
            saturation, hue), applied in SSD's order with contrast before or after the
            colour steps at random.
        brightness_delta: added brightness range ``[-delta, delta]`` (0..255 scale).
        contrast_range: contrast factor range.
        saturation_range: saturation factor range.
        hue_delta: hue shift range in degrees.
        expand_prob: probability of zooming out onto a mean-filled canvas.
        expand_max_ratio: largest canvas side over image side.
        crop_prob: probability of cropping at all.
        crop_min_ious: the crop modes: minimum IoU with some box (``None`` = any crop).
        crop_scale: range of the crop side over the image side.
        crop_aspect_ratio: range of the crop's height/width.
        flip_prob: probability of a horizontal flip.
        max_crop_trials: attempts per crop mode before keeping the image as it is.
    """

    def __init__(
        self,
        *,
        size: int,
        photometric_prob: float = 0.5,
        brightness_delta: float = 32.0,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: float = 18.0,
        expand_prob: float = 0.5,
        expand_max_ratio: float = 4.0,
        crop_prob: float = 1.0,
        crop_min_ious: Sequence[float | None] = (None, 0.1, 0.3, 0.5, 0.7, 0.9),
        crop_scale: tuple[float, float] = (0.3, 1.0),
        crop_aspect_ratio: tuple[float, float] = (0.5, 2.0),
        flip_prob: float = 0.5,
        max_crop_trials: int = 50,
    ) -> None:
        self.size = size
        self.photometric_prob = photometric_prob
        self.brightness_delta = brightness_delta
        self.contrast_range = contrast_range
        self.saturation_range = saturation_range
        self.hue_delta = hue_delta
        self.expand_prob = expand_prob
        self.expand_max_ratio = expand_max_ratio
        self.crop_prob = crop_prob
        self.crop_min_ious = list(crop_min_ious)
        self.crop_scale = crop_scale
        self.crop_aspect_ratio = crop_aspect_ratio
        self.flip_prob = flip_prob
        self.max_crop_trials = max_crop_trials

    def __call__(
        self,
        image: np.ndarray,
        boxes: np.ndarray,
        labels: np.ndarray,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """SSD's augmentation, geometry first: the zoom-out, crop and flip are decided on
        the boxes alone, the image is warped once to the output size (the mean fills
        what lies outside it) and the colour is jittered on the small output. The random
        draws are SSD's, in its order."""
        height, width = image.shape[:2]
        boxes = boxes.astype(np.float32)
        photometric = self.draw_photometric(rng)
        # The (virtual) zoomed-out canvas: the image sits at ``offset`` inside it.
        canvas_w, canvas_h, offset = width, height, np.zeros(2, dtype=np.float32)
        if rng.random() < self.expand_prob:
            ratio = rng.uniform(1.0, self.expand_max_ratio)
            canvas_h, canvas_w = int(height * ratio), int(width * ratio)
            top = int(rng.uniform(0, canvas_h - height))
            left = int(rng.uniform(0, canvas_w - width))
            offset = np.array([left, top], dtype=np.float32)
            boxes = boxes + np.tile(offset, 2)
        window = np.array([0, 0, canvas_w, canvas_h], dtype=np.float32)
        if len(boxes) and rng.random() < self.crop_prob:
            window, boxes, labels = self.crop_window(canvas_w, canvas_h, boxes, labels, rng)
        window_w, window_h = window[2] - window[0], window[3] - window[1]
        flip = rng.random() < self.flip_prob
        if flip:
            boxes = np.stack(
                [window_w - boxes[:, 2], boxes[:, 1], window_w - boxes[:, 0], boxes[:, 3]], axis=1
            )
        output = warp_window(
            image,
            window - np.tile(offset, 2),
            self.size,
            flip=flip,
            fill=(canvas_w, canvas_h) != (width, height),
        )
        output = self.photometric(output, photometric)
        scale = np.array([window_w, window_h, window_w, window_h], dtype=np.float32)
        normalised = np.clip(boxes.reshape(-1, 4) / scale, 0.0, 1.0)
        normalised, labels = _keep_valid(normalised, labels, 0.1 / self.size)
        return output, normalised, labels

    def draw_photometric(self, rng: np.random.Generator) -> PhotometricDraw | None:
        """The colour jitter of one sample (SSD's draws, in its order); None when off."""
        p = self.photometric_prob
        if p <= 0:
            return None
        brightness = (
            rng.uniform(-self.brightness_delta, self.brightness_delta) if rng.random() < p else None
        )
        contrast_first = rng.random() < 0.5
        contrast = (
            rng.uniform(*self.contrast_range) if contrast_first and rng.random() < p else None
        )
        saturation = rng.uniform(*self.saturation_range) if rng.random() < p else None
        hue = rng.uniform(-self.hue_delta, self.hue_delta) if rng.random() < p else None
        if not contrast_first and rng.random() < p:
            contrast = rng.uniform(*self.contrast_range)
        return PhotometricDraw(brightness, contrast, contrast_first, saturation, hue)

    @staticmethod
    def photometric(image: np.ndarray, draw: PhotometricDraw | None) -> np.ndarray:
        """SSD's photometric distortion in 8 bits, as the original Caffe SSD: brightness,
        contrast before or after the saturation and hue steps, each only when drawn. The
        per-value steps are lookup tables; saturation and hue act on 8-bit HSV (hue on
        the full circle in 256 steps)."""
        if draw is None or draw.is_identity:
            return image
        levels = np.arange(256, dtype=np.float32)
        before = levels + (draw.brightness or 0.0)
        if draw.contrast_first and draw.contrast is not None:
            before *= draw.contrast
        after = levels * (draw.contrast if not draw.contrast_first and draw.contrast else 1.0)
        if draw.saturation is None and draw.hue is None:
            return cv2.LUT(image, _to_uint8(after[_to_uint8(before)]))
        result = cv2.LUT(image, _to_uint8(before))
        hsv = cv2.cvtColor(result, cv2.COLOR_RGB2HSV_FULL)
        hue = (levels + (draw.hue or 0.0) * 256.0 / 360.0) % 256.0
        saturation = levels * (draw.saturation if draw.saturation is not None else 1.0)
        table = np.stack([np.floor(hue + 0.5) % 256, saturation, levels], axis=1)
        hsv = cv2.LUT(hsv, _to_uint8(table)[:, None, :])
        result = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)
        if not draw.contrast_first and draw.contrast is not None:
            result = cv2.LUT(result, _to_uint8(after))
        return result

    def crop_window(
        self,
        width: int,
        height: int,
        boxes: np.ndarray,
        labels: np.ndarray,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """SSD's random crop of a ``width x height`` image: a window (integer pixels)
        whose IoU with some box reaches the mode's minimum, and the boxes whose centres
        fall inside it, clipped to it and relative to it. The whole image and all boxes
        when no trial succeeds."""
        min_iou = self.crop_min_ious[int(rng.integers(len(self.crop_min_ious)))]
        for _ in range(self.max_crop_trials):
            crop_w = rng.uniform(self.crop_scale[0], self.crop_scale[1]) * width
            crop_h = rng.uniform(self.crop_scale[0], self.crop_scale[1]) * height
            aspect = crop_h / crop_w
            if not self.crop_aspect_ratio[0] <= aspect <= self.crop_aspect_ratio[1]:
                continue
            left = rng.uniform(0, width - crop_w)
            top = rng.uniform(0, height - crop_h)
            rect = np.array([left, top, left + crop_w, top + crop_h], dtype=np.float32)
            rect = np.round(rect)
            if rect[2] - rect[0] < 1 or rect[3] - rect[1] < 1:
                continue
            if min_iou is not None and box_iou_np(boxes, rect).max() < min_iou:
                continue
            centres = (boxes[:, :2] + boxes[:, 2:]) / 2
            inside = (
                (centres[:, 0] > rect[0])
                & (centres[:, 1] > rect[1])
                & (centres[:, 0] < rect[2])
                & (centres[:, 1] < rect[3])
            )
            if not inside.any():
                continue
            kept = boxes[inside].copy()
            kept[:, :2] = np.maximum(kept[:, :2], rect[:2]) - rect[:2]
            kept[:, 2:] = np.minimum(kept[:, 2:], rect[2:]) - rect[:2]
            return rect, kept, labels[inside]
        return np.array([0, 0, width, height], dtype=np.float32), boxes, labels


@dataclass(frozen=True)
class PhotometricDraw:
    """One sample's colour jitter (None: the step is skipped)."""

    brightness: float | None
    contrast: float | None
    contrast_first: bool
    saturation: float | None
    hue: float | None

    @property
    def is_identity(self) -> bool:
        return all(
            value is None for value in (self.brightness, self.contrast, self.saturation, self.hue)
        )


def warp_window(
    image: np.ndarray, window: np.ndarray, size: int, *, flip: bool = False, fill: bool = False
) -> np.ndarray:
    """The ``window`` (x1, y1, x2, y2 in the image's pixels) resized to ``size x size``
    in one bilinear warp, mirrored when ``flip``. Sampling matches ``cv2.resize`` of the
    cut-out window (pixel centres aligned). Beyond the image's edge the warp repeats the
    edge, as a resize does; with ``fill`` (a zoomed-out window that reaches outside the
    image) it reads the mean fill there instead."""
    x1, y1, x2, y2 = (float(value) for value in window)
    scale_x, scale_y = (x2 - x1) / size, (y2 - y1) / size
    # Output pixel (u, v) reads the image at x = (u + 0.5) * scale_x - 0.5 + x1, or the
    # mirrored x = x2 - 0.5 - (u + 0.5) * scale_x.
    if flip:
        row_x = [-scale_x, 0.0, x2 - 0.5 - 0.5 * scale_x]
    else:
        row_x = [scale_x, 0.0, x1 - 0.5 + 0.5 * scale_x]
    inverse = np.array([row_x, [0.0, scale_y, y1 - 0.5 + 0.5 * scale_y]], dtype=np.float64)
    return cv2.warpAffine(
        image,
        inverse,
        (size, size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT if fill else cv2.BORDER_REPLICATE,
        borderValue=MEAN_FILL_RGB,
    )


# A mosaic keeps a box cut by its window when at least this share of its area is inside
# (a sliver of an object teaches the wrong box).
MOSAIC_MIN_VISIBLE = 0.4


def mosaic(
    tiles: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Four augmented images tiled 2 x 2 and cut back to one image's size around a
    random centre: objects keep their scale, the image shows parts of four scenes and
    more objects, many of them cut at the window's edge.

    Args:
        tiles: four (image ``[S, S, 3]``, boxes ``[G, 4]`` normalised xyxy, labels
            ``[G]``), as :class:`SSDAugmentation` returns them.
        rng: draws the window's centre (uniform over the middle ``S x S`` of the canvas).

    Returns:
        The image ``[S, S, 3]``, the boxes inside it (clipped, normalised; a box cut by
        the window stays when at least :data:`MOSAIC_MIN_VISIBLE` of its area is inside)
        and their labels.
    """
    size = tiles[0][0].shape[0]
    canvas = np.empty((2 * size, 2 * size, 3), dtype=np.uint8)
    all_boxes, all_labels = [], []
    for tile_index, (image, boxes, labels) in enumerate(tiles):
        row, column = divmod(tile_index, 2)
        canvas[row * size : (row + 1) * size, column * size : (column + 1) * size] = image
        offset = np.array([column, row, column, row], dtype=np.float32) * size
        all_boxes.append(boxes.reshape(-1, 4).astype(np.float32) * size + offset)
        all_labels.append(labels)
    left = int(rng.integers(0, size + 1))
    top = int(rng.integers(0, size + 1))
    window = np.array([left, top, left + size, top + size], dtype=np.float32)
    boxes = np.concatenate(all_boxes)
    labels = np.concatenate(all_labels)
    clipped = np.concatenate(
        [np.maximum(boxes[:, :2], window[:2]), np.minimum(boxes[:, 2:], window[2:])], axis=1
    )
    visible = np.clip(clipped[:, 2:] - clipped[:, :2], 0, None).prod(axis=1)
    area = (boxes[:, 2:] - boxes[:, :2]).prod(axis=1)
    keep = (visible > 0) & (visible >= MOSAIC_MIN_VISIBLE * area)
    normalised = (clipped[keep] - np.concatenate([window[:2], window[:2]])) / size
    image = canvas[top : top + size, left : left + size]
    return np.ascontiguousarray(image), normalised.astype(np.float32), labels[keep]


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Values rounded to the nearest level and saturated to 0..255 (OpenCV's
    ``saturate_cast``)."""
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)
