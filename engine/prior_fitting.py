"""Prior coverage and fitting for a config: its training boxes, its feature maps and its
matching threshold handed to the search in :mod:`layers.prior_search` (``tools.fit_priors``
and ``tools.make_config`` call :func:`fit_config_priors`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from data.records import AnnotationRecord
from data.sources import prepare_data, read_records, resolve_class_names
from layers.prior_search import (
    RESTARTS,
    SAMPLE,
    Coverage,
    fit_priors,
    generate_priors,
    grid_limit,
    prior_coverage,
    ssd_rule_priors,
)
from models.build import feature_map_sizes
from utils.config import Config, PriorConfig


@dataclass
class PriorFit:
    """A config's training boxes, their coverage by its priors (``None`` when its
    priors do not describe the network's maps), the fitted priors and their coverage,
    and :func:`grid_limit`."""

    boxes: int
    before: Coverage | None
    fitted: PriorConfig
    after: Coverage
    limit: float


def training_boxes(config: Config, records: list[AnnotationRecord] | None = None) -> Tensor:
    """Every box of the config's training sets (or of ``records`` read from them),
    normalised by its image: ``[G, 4]``."""
    if records is None:
        prepare_data(config)
        records = read_records(config, "train", resolve_class_names(config))
    boxes = [
        record.boxes / np.array([record.width, record.height] * 2, dtype=np.float32)
        for record in records
    ]
    return torch.from_numpy(np.concatenate([np.zeros((0, 4), np.float32), *boxes]))


def fit_config_priors(
    config: Config,
    *,
    max_priors: int | None = None,
    seed: int = 0,
    sample: int = SAMPLE,
    restarts: int = RESTARTS,
    records: list[AnnotationRecord] | None = None,
) -> PriorFit:
    """Fit priors to a config's training boxes at its input size and matching
    threshold, with at most ``max_priors`` (default: as many as its priors give, or as
    SSD's recipe gives when they do not describe the network's maps).

    Raises:
        ValueError: there are no training boxes, or ``max_priors`` is too few.
    """
    size = config.model.image_size
    map_sizes = feature_map_sizes(config.model)
    boxes = training_boxes(config, records)
    if boxes.shape[0] == 0:
        raise ValueError("the training sets hold no boxes to fit priors to")
    threshold = config.loss.iou_threshold
    base, before = config.priors, None
    if len(base.min_sizes) == len(map_sizes):
        current = generate_priors(base, size, map_sizes)
        before = prior_coverage(boxes, current, threshold=threshold, image_size=size)
    else:
        base = ssd_rule_priors(base, size, len(map_sizes))
    budget = max_priors or generate_priors(base, size, map_sizes).shape[0]
    fitted, after = fit_priors(
        boxes,
        base,
        image_size=size,
        map_sizes=map_sizes,
        threshold=threshold,
        max_priors=budget,
        seed=seed,
        sample=sample,
        restarts=restarts,
    )
    limit = grid_limit(
        boxes,
        image_size=size,
        map_sizes=map_sizes,
        steps=fitted.steps,
        threshold=threshold,
        clip=fitted.clip,
    )
    return PriorFit(int(boxes.shape[0]), before, fitted, after, limit)
