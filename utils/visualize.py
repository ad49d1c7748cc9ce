"""Drawing detections legibly: one colour per class, labels on filled tags."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import cv2
import numpy as np


def class_color(label: int) -> tuple[int, int, int]:
    """A distinct, saturated RGB colour per label (golden-ratio hue steps)."""
    hue = (label * 0.618033988749895) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(red * 255), int(green * 255), int(blue * 255)


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    class_names: Sequence[str],
    *,
    score_threshold: float = 0.3,
) -> np.ndarray:
    """A copy of RGB ``image`` with boxes (pixels, xyxy) above ``score_threshold`` drawn,
    each tagged ``name score``. Lines and text scale with the image size."""
    canvas = np.ascontiguousarray(image).copy()
    height, width = canvas.shape[:2]
    scale = max(height, width) / 600.0
    thickness = max(1, round(2 * scale))
    font_scale = max(0.4, 0.5 * scale)
    keep = scores >= score_threshold
    # Draw the weakest first so the strongest stay on top.
    for index in np.argsort(scores[keep]):
        box = boxes[keep][index]
        label = int(labels[keep][index])
        score = float(scores[keep][index])
        color = class_color(label)
        x1, y1, x2, y2 = (round(value) for value in box)
        x1, x2 = np.clip([x1, x2], 0, width - 1)
        y1, y2 = np.clip([y1, y2], 0, height - 1)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, thickness, cv2.LINE_AA)
        name = class_names[label - 1] if 0 < label <= len(class_names) else str(label)
        text = f"{name} {score:.2f}"
        (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        top = y1 - text_h - baseline - 2 if y1 - text_h - baseline - 2 >= 0 else y1
        cv2.rectangle(canvas, (x1, top), (x1 + text_w + 4, top + text_h + baseline + 2), color, -1)
        luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
        text_color = (0, 0, 0) if luminance > 140 else (255, 255, 255)
        cv2.putText(
            canvas,
            text,
            (x1 + 2, top + text_h + 1),
            cv2.FONT_HERSHEY_SIMPLEX,
            font_scale,
            text_color,
            1,
            cv2.LINE_AA,
        )
    return canvas
