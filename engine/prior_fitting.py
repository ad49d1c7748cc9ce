"""How well a config's priors cover a dataset's boxes, and priors fitted to raise it.

A ground-truth box is *covered* when some prior overlaps it at IoU >= the matching
threshold (``loss.iou_threshold``): only then can it have positives beyond the one prior
the matcher forces on it. Coverage is measured at the model's input size, on the boxes
of the training sets normalised by their images, against the priors the model
generates for its real feature maps.

Fitting keeps the network (feature maps, steps, clipping) and searches SSD's prior
parametrisation: min sizes spaced geometrically from ``s_min`` to ``s_max`` over the
maps, each map's max size the next map's min size, and a choice of aspect-ratio
patterns, under a cap on the prior count. The search maximises coverage directly
(then the mean best IoU) on a seeded sample of the boxes, so it is deterministic.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

from layers.box_coding import cxcywh_to_xyxy
from models.build import build_prior_generator
from utils.config import PriorConfig

# Box sizes (square root of the area, in input pixels) reported apart.
SIZE_EDGES = (0, 16, 32, 64, 128, 256, float("inf"))


@dataclass
class Coverage:
    """``covered``: share of boxes with a prior at IoU >= ``threshold``;
    ``mean_best_iou``: mean over boxes of the best prior IoU; ``by_size``: per size
    band ``(low, high, boxes, covered share)``; ``num_priors``."""

    covered: float
    mean_best_iou: float
    by_size: list[tuple[float, float, int, float]]
    num_priors: int
    threshold: float


def best_prior_iou(boxes_xyxy: Tensor, priors_cxcywh: Tensor, chunk: int = 2048) -> Tensor:
    """``[G]`` the highest IoU of each normalised xyxy box ``[G, 4]`` with any prior."""
    priors_xyxy = cxcywh_to_xyxy(priors_cxcywh.float())
    best = [
        box_iou(boxes_xyxy[start : start + chunk].float(), priors_xyxy).max(dim=1).values
        for start in range(0, boxes_xyxy.shape[0], chunk)
    ]
    return torch.cat(best) if best else torch.zeros(0)


def prior_coverage(
    boxes_xyxy: Tensor, priors_cxcywh: Tensor, *, threshold: float, image_size: int
) -> Coverage:
    """The coverage of normalised boxes ``[G, 4]`` by priors ``[P, 4]``."""
    best = best_prior_iou(boxes_xyxy, priors_cxcywh)
    covered = best >= threshold
    sides = (boxes_xyxy[:, 2] - boxes_xyxy[:, 0]) * (boxes_xyxy[:, 3] - boxes_xyxy[:, 1])
    sides = sides.clamp(min=0).sqrt() * image_size
    by_size = []
    for low, high in itertools.pairwise(SIZE_EDGES):
        band = (sides >= low) & (sides < high)
        count = int(band.sum())
        if count:
            by_size.append((low, high, count, float(covered[band].float().mean())))
    return Coverage(
        covered=float(covered.float().mean()) if len(best) else float("nan"),
        mean_best_iou=float(best.mean()) if len(best) else float("nan"),
        by_size=by_size,
        num_priors=int(priors_cxcywh.shape[0]),
        threshold=threshold,
    )


def grid_limit(
    boxes_xyxy: Tensor,
    *,
    image_size: int,
    map_sizes: Sequence[tuple[int, int]],
    steps: Sequence[float] | None,
    threshold: float,
) -> float:
    """The coverage no prior settings can exceed on these feature maps: each box's IoU
    with a prior of exactly its own shape at the nearest prior centre of the best map.
    (Priors only choose shapes; where their centres sit is the network's grid.)"""
    cx, cy = (boxes_xyxy[:, 0] + boxes_xyxy[:, 2]) / 2, (boxes_xyxy[:, 1] + boxes_xyxy[:, 3]) / 2
    width, height = boxes_xyxy[:, 2] - boxes_xyxy[:, 0], boxes_xyxy[:, 3] - boxes_xyxy[:, 1]
    best = torch.zeros(boxes_xyxy.shape[0])
    for index, (rows, columns) in enumerate(map_sizes):
        step_x = steps[index] / image_size if steps else 1.0 / columns
        step_y = steps[index] / image_size if steps else 1.0 / rows
        centre_x = ((cx / step_x - 0.5).round().clamp(0, columns - 1) + 0.5) * step_x
        centre_y = ((cy / step_y - 0.5).round().clamp(0, rows - 1) + 0.5) * step_y
        overlap_x = (width - (cx - centre_x).abs()).clamp(min=0)
        overlap_y = (height - (cy - centre_y).abs()).clamp(min=0)
        inter = overlap_x * overlap_y
        best = torch.maximum(best, inter / (2 * width * height - inter).clamp(min=1e-12))
    return float((best >= threshold).float().mean()) if len(best) else float("nan")


def generate_priors(
    priors: PriorConfig, image_size: int, map_sizes: Sequence[tuple[int, int]]
) -> Tensor:
    """``[P, 4]`` the priors ``priors`` gives on these maps (``models.build``'s generator)."""
    return build_prior_generator(priors)(image_size, list(map_sizes))


def candidate_settings(base: PriorConfig, image_size: int, num_maps: int) -> list[PriorConfig]:
    """The prior settings the search tries: geometric min sizes from ``s_min`` to
    ``s_max`` (each map's max size is the next map's min size) with one of a few
    aspect-ratio patterns; steps and clipping stay the base's."""
    small = np.geomspace(0.02, 0.25, 10) * image_size
    large = np.linspace(0.6, 1.1, 6) * image_size
    patterns = {
        "base": [list(ratios) for ratios in base.aspect_ratios],
        "2": [[2.0]] * num_maps,
        "2,3": [[2.0, 3.0]] * num_maps,
        "2,3 inside": [[2.0]] + [[2.0, 3.0]] * max(num_maps - 2, 0) + [[2.0]],
        "1.5,2": [[1.5, 2.0]] * num_maps,
        "1.5,2,3 inside": [[1.5, 2.0]] + [[1.5, 2.0, 3.0]] * max(num_maps - 2, 0) + [[1.5, 2.0]],
    }
    settings = []
    for s_min, s_max, ratios in itertools.product(small, large, patterns.values()):
        points = np.geomspace(s_min, s_max, num_maps + 1)
        settings.append(
            dataclasses.replace(
                base,
                min_sizes=[round(float(value), 2) for value in points[:-1]],
                max_sizes=[round(float(value), 2) for value in points[1:]],
                aspect_ratios=[list(item) for item in ratios[:num_maps]],
            )
        )
    return settings


def fit_priors(
    boxes_xyxy: Tensor,
    base: PriorConfig,
    *,
    image_size: int,
    map_sizes: Sequence[tuple[int, int]],
    threshold: float,
    max_priors: int,
    seed: int = 0,
    sample: int = 4000,
) -> tuple[PriorConfig, Coverage]:
    """The candidate settings with the highest coverage (then mean best IoU) of a seeded
    sample of ``sample`` boxes, among those with at most ``max_priors`` priors; the
    base settings win ties. Returns them and their coverage of all the boxes."""
    generator = np.random.default_rng(seed)
    if boxes_xyxy.shape[0] > sample:
        chosen = np.sort(generator.choice(boxes_xyxy.shape[0], sample, replace=False))
        sampled = boxes_xyxy[torch.from_numpy(chosen)]
    else:
        sampled = boxes_xyxy
    best_key, best_settings = None, base
    for settings in [base, *candidate_settings(base, image_size, len(map_sizes))]:
        priors = generate_priors(settings, image_size, map_sizes)
        if priors.shape[0] > max_priors and settings is not base:
            continue
        best_iou = best_prior_iou(sampled, priors)
        key = (float((best_iou >= threshold).float().mean()), float(best_iou.mean()))
        if best_key is None or key > best_key:
            best_key, best_settings = key, settings
    priors = generate_priors(best_settings, image_size, map_sizes)
    coverage = prior_coverage(boxes_xyxy, priors, threshold=threshold, image_size=image_size)
    return best_settings, coverage
