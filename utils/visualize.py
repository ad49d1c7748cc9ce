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
    scores: np.ndarray | None,
    class_names: Sequence[str],
    *,
    score_threshold: float = 0.3,
    tags: bool = True,
) -> np.ndarray:
    """A copy of RGB ``image`` with boxes (pixels, xyxy) above ``score_threshold`` drawn,
    each tagged ``name score``; without ``scores`` (ground truth) every box is drawn,
    tagged ``name`` (no tags with ``tags=False``). Lines and text scale with the image
    size."""
    show_scores = scores is not None
    if scores is None:
        scores = np.ones(len(boxes), dtype=np.float32)
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
        if not tags:
            continue
        name = class_names[label - 1] if 0 < label <= len(class_names) else str(label)
        text = f"{name} {score:.2f}" if show_scores else name
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


def draw_pr_curves(
    curves: Sequence[tuple[str, np.ndarray, np.ndarray, float]],
    *,
    panel_size: int = 220,
    columns: int = 5,
) -> np.ndarray:
    """Precision/recall curves, one panel per class, as an RGB image.

    Each entry is ``(name, recall [D], precision [D], AP)``; a panel shows the curve on
    [0, 1] x [0, 1] with a 0.2 grid and ``name  AP 0.123`` above it. Drawn with OpenCV:
    a million-detection curve takes milliseconds, where a plotting library takes seconds.
    """
    columns = max(1, min(columns, len(curves)))
    rows = max(1, -(-len(curves) // columns))
    canvas = np.full((rows * panel_size, columns * panel_size, 3), 255, dtype=np.uint8)
    font, small = cv2.FONT_HERSHEY_SIMPLEX, 0.36
    left, right, top, bottom = 34, 10, 24, 30
    inner = panel_size - left - right, panel_size - top - bottom  # plot width, height
    for index, (name, recall, precision, ap) in enumerate(curves):
        x0 = (index % columns) * panel_size + left
        y0 = (index // columns) * panel_size + top

        def point(r: float, p: float, x0: int = x0, y0: int = y0) -> tuple[int, int]:
            return round(x0 + r * inner[0]), round(y0 + (1.0 - p) * inner[1])

        for step in range(6):
            value = step / 5
            cv2.line(canvas, point(value, 0), point(value, 1), (225, 225, 225), 1)
            cv2.line(canvas, point(0, value), point(1, value), (225, 225, 225), 1)
        cv2.rectangle(canvas, point(0, 1), point(1, 0), (90, 90, 90), 1)
        for value, text in ((0.0, "0"), (0.5, ".5"), (1.0, "1")):
            x, y = point(value, 0)
            cv2.putText(canvas, text, (x - 6, y + 13), font, small, (60, 60, 60), 1, cv2.LINE_AA)
            x, y = point(0, value)
            cv2.putText(canvas, text, (x - 20, y + 4), font, small, (60, 60, 60), 1, cv2.LINE_AA)
        x, y = point(0.5, 0)
        cv2.putText(canvas, "recall", (x - 18, y + 26), font, small, (60, 60, 60), 1, cv2.LINE_AA)
        title = f"{name[:18]}  AP {ap:.3f}"
        cv2.putText(canvas, title, (x0, y0 - 8), font, 0.42, (20, 20, 20), 1, cv2.LINE_AA)
        finite = np.flatnonzero(np.isfinite(recall) & np.isfinite(precision))
        if finite.size:
            # At most a few points per pixel column: evenly spaced in rank, the last kept.
            finite = finite[np.unique(np.linspace(0, finite.size - 1, 3 * inner[0]).astype(int))]
            pixels = np.stack(
                [x0 + recall[finite] * inner[0], y0 + (1.0 - precision[finite]) * inner[1]], 1
            )
            cv2.polylines(
                canvas,
                [np.round(pixels).astype(np.int32).reshape(-1, 1, 2)],
                False,
                (31, 119, 180),
                2,
                cv2.LINE_AA,
            )
    return canvas
