"""A generated detection dataset in VOC format: shapes on textured, cluttered backgrounds.

Each image holds 1-6 objects of five classes at varied scales (about 8 % to 60 % of the
image side), aspect ratios (1:2 to 2:1) and small rotations, overlapping a little (no
object hides over 40 % of an earlier one) and at most 30 % outside the image, in colours
that stand out from the background under them, over a smooth colour field with noise,
stripes, lines and dots as clutter. The output is a
VOCdevkit-style folder (``JPEGImages``, ``Annotations``, ``ImageSets/Main/{train,val}.txt``)
and a ``shapes.json`` manifest of the settings. Everything is a function of the seed.

    python -m tools.make_shapes --root datasets/shapes --train 2000 --val 300
"""

from __future__ import annotations

import json
import logging
import math
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import cv2
import numpy as np

logger = logging.getLogger(__name__)

SHAPE_CLASSES = ("ellipse", "rectangle", "triangle", "star", "cross")
MANIFEST = "shapes.json"
GENERATOR_VERSION = 3
MIN_CONTRAST = 100.0


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth colour field + low-frequency texture + stripes + noise, float32 [S, S, 3]."""
    corners = rng.uniform(30, 225, size=(2, 2, 3)).astype(np.float32)
    image = cv2.resize(corners, (size, size), interpolation=cv2.INTER_LINEAR)
    texture = rng.normal(0, 1, size=(size // 16, size // 16, 3)).astype(np.float32)
    image += cv2.resize(texture, (size, size), interpolation=cv2.INTER_CUBIC) * rng.uniform(5, 25)
    if rng.random() < 0.5:
        period = rng.uniform(6, 30)
        angle = rng.uniform(0, math.pi)
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
        phase = (xs * math.cos(angle) + ys * math.sin(angle)) * (2 * math.pi / period)
        image += (np.sin(phase)[..., None] * rng.uniform(5, 20)).astype(np.float32)
    return image


def _clutter(rng: np.random.Generator, image: np.ndarray, size: int) -> None:
    """Lines and dots that are not objects."""
    for _ in range(int(rng.integers(0, 7))):
        start = tuple(int(value) for value in rng.integers(0, size, 2))
        end = tuple(int(value) for value in rng.integers(0, size, 2))
        color = tuple(float(value) for value in rng.uniform(0, 255, 3))
        cv2.line(image, start, end, color, int(rng.integers(1, 3)), cv2.LINE_AA)
    for _ in range(int(rng.integers(0, 10))):
        centre = tuple(int(value) for value in rng.integers(0, size, 2))
        color = tuple(float(value) for value in rng.uniform(0, 255, 3))
        cv2.circle(image, centre, int(rng.integers(1, 4)), color, -1, cv2.LINE_AA)


def _contrasting_color(
    rng: np.random.Generator, image: np.ndarray, centre: np.ndarray, half: np.ndarray
) -> tuple[float, float, float]:
    """A random colour at least ``MIN_CONTRAST`` (RGB distance) from the mean of the
    background the object will cover, so every annotated object is visible."""
    size = image.shape[0]
    x1, y1 = (max(int(value), 0) for value in centre - half)
    x2, y2 = (min(int(value) + 1, size) for value in centre + half)
    patch = image[y1:y2, x1:x2]
    background = patch.reshape(-1, 3).mean(axis=0) if patch.size else np.full(3, 127.0)
    color = rng.uniform(0, 255, 3)
    for _ in range(20):
        if np.linalg.norm(color - background) >= MIN_CONTRAST:
            break
        color = rng.uniform(0, 255, 3)
    else:
        color = np.where(background > 127, 0.0, 255.0)
    return tuple(float(value) for value in color)


def _rotate(points: np.ndarray, angle: float, centre: np.ndarray) -> np.ndarray:
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return (points - centre) @ rotation.T + centre


def _shape_polygon(name: str, centre: np.ndarray, half: np.ndarray, angle: float) -> np.ndarray:
    """Outline points [N, 2] of a polygon class inside the half-extents ``half``."""
    if name == "rectangle":
        unit = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
    elif name == "triangle":
        unit = np.array([[0, -1], [1, 1], [-1, 1]], dtype=np.float64)
    elif name == "star":
        angles = np.arange(10) * math.pi / 5 - math.pi / 2
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        unit = np.stack([np.cos(angles) * radii, np.sin(angles) * radii], axis=1)
    elif name == "cross":
        a = 0.33
        unit = np.array(
            [[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1], [-a, a],
             [-1, a], [-1, -a], [-a, -a]],
            dtype=np.float64,
        )  # fmt: skip
    else:
        raise ValueError(f"unknown shape {name!r}")
    return _rotate(unit * half + centre, angle, centre)


def _draw_object(
    rng: np.random.Generator, image: np.ndarray, name: str, size: int
) -> np.ndarray | None:
    """Draw one object; returns its tight box [x1, y1, x2, y2] (pixels) or None if the
    box would be too small after clipping."""
    side = rng.uniform(0.08, 0.6) * size
    aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
    half = np.array([side * math.sqrt(aspect), side / math.sqrt(aspect)]) / 2
    # At most 30 % of the object's width or height may fall outside the image.
    margin = np.minimum(0.4 * half, size / 2)
    centre = rng.uniform(margin, size - margin)
    angle = 0.0 if name in ("ellipse", "rectangle") else rng.uniform(-0.35, 0.35)
    color = _contrasting_color(rng, image, centre, half)
    if name == "ellipse":
        cv2.ellipse(
            image,
            (round(centre[0] * 16), round(centre[1] * 16)),
            (round(half[0] * 16), round(half[1] * 16)),
            0,
            0,
            360,
            color,
            -1,
            cv2.LINE_AA,
            shift=4,
        )
        box = np.array([*(centre - half), *(centre + half)])
    else:
        polygon = _shape_polygon(name, centre, half, angle)
        cv2.fillPoly(image, [np.round(polygon * 16).astype(np.int32)], color, cv2.LINE_AA, shift=4)
        box = np.array([*polygon.min(axis=0), *polygon.max(axis=0)])
    box = np.clip(box, 0, size)
    if box[2] - box[0] < 6 or box[3] - box[1] < 6:
        return None
    return box


def generate_image(
    seed: int, split: str, index: int, size: int
) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """One image (BGR uint8, for OpenCV's writer) and its objects as (class, box)."""
    split_key = 0 if split == "train" else 1
    rng = np.random.default_rng(np.random.SeedSequence([seed, split_key, index]))
    image = _background(rng, size)
    _clutter(rng, image, size)
    objects: list[tuple[str, np.ndarray]] = []
    for _ in range(int(rng.integers(1, 7))):
        name = SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))]
        # Draw on a copy so a rejected placement leaves no trace.
        canvas = image.copy()
        box = _draw_object(rng, canvas, name, size)
        if box is None or any(_covers(box, other) for _, other in objects):
            continue
        image = canvas
        objects.append((name, box))
    image += rng.normal(0, rng.uniform(2, 8), image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), objects


def _covers(new: np.ndarray, old: np.ndarray) -> bool:
    """Whether the new box hides too much of an older one (over 40 % of it)."""
    width = min(new[2], old[2]) - max(new[0], old[0])
    height = min(new[3], old[3]) - max(new[1], old[1])
    if width <= 0 or height <= 0:
        return False
    return width * height > 0.4 * (old[2] - old[0]) * (old[3] - old[1])


def _voc_xml(image_id: str, size: int, objects: list[tuple[str, np.ndarray]]) -> bytes:
    root = ElementTree.Element("annotation")
    ElementTree.SubElement(root, "folder").text = "shapes"
    ElementTree.SubElement(root, "filename").text = f"{image_id}.jpg"
    size_element = ElementTree.SubElement(root, "size")
    for tag, value in (("width", size), ("height", size), ("depth", 3)):
        ElementTree.SubElement(size_element, tag).text = str(value)
    for name, box in objects:
        element = ElementTree.SubElement(root, "object")
        ElementTree.SubElement(element, "name").text = name
        ElementTree.SubElement(element, "difficult").text = "0"
        bndbox = ElementTree.SubElement(element, "bndbox")
        # Continuous [x1, x2] covers 1-based inclusive pixels floor(x1)+1 .. ceil(x2).
        values = (
            math.floor(box[0]) + 1,
            math.floor(box[1]) + 1,
            max(math.ceil(box[2]), math.floor(box[0]) + 1),
            max(math.ceil(box[3]), math.floor(box[1]) + 1),
        )
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), values, strict=True):
            ElementTree.SubElement(bndbox, tag).text = str(int(value))
    ElementTree.indent(root)
    return ElementTree.tostring(root, encoding="utf-8")


def ensure_shapes_dataset(
    root: str | Path, *, num_train: int, num_val: int, image_size: int, seed: int
) -> Path:
    """Generate the dataset at ``root`` unless a complete one with the same settings is
    there.

    Raises:
        ValueError: ``root`` holds a shapes dataset made with other settings.
    """
    root = Path(root)
    settings = {
        "version": GENERATOR_VERSION,
        "train_images": num_train,
        "val_images": num_val,
        "image_size": image_size,
        "seed": seed,
        "classes": list(SHAPE_CLASSES),
    }
    manifest = root / MANIFEST
    if manifest.is_file():
        existing = json.loads(manifest.read_text(encoding="utf-8"))
        if existing == settings:
            return root
        raise ValueError(
            f"{manifest}: the shapes dataset there was generated with other settings "
            f"({existing}); delete {root} or set data.root to another folder"
        )
    logger.info(
        "generating the shapes dataset in %s (%d train, %d val images)", root, num_train, num_val
    )
    for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for split, count in (("train", num_train), ("val", num_val)):
        ids = []
        for index in range(count):
            image_id = f"{split}_{index:06d}"
            image, objects = generate_image(seed, split, index, image_size)
            cv2.imwrite(
                str(root / "JPEGImages" / f"{image_id}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 92]
            )
            (root / "Annotations" / f"{image_id}.xml").write_bytes(
                _voc_xml(image_id, image_size, objects)
            )
            ids.append(image_id)
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text(
            "\n".join(ids) + "\n", encoding="utf-8"
        )
    # Written last: its presence marks a complete dataset.
    manifest.write_text(json.dumps(settings, indent=2), encoding="utf-8")
    return root
