"""SSD box coding: offsets of boxes relative to priors, scaled by variances.

Boxes are ``xyxy`` at every interface; ``cxcywh`` appears only here and in prior
generation, in names that say so. Coordinates are normalised to [0, 1].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from utils.boxes import cxcywh_to_xyxy, xyxy_to_cxcywh

# Largest log-scale a decoded width/height may take: exp() of an untrained or fp16
# prediction can overflow to inf, which would poison NMS and the loss. Same bound as
# torchvision's detection box coder (a box 1000/16 times its prior).
MAX_LOG_SCALE: float = math.log(1000.0 / 16)


def encode(
    boxes_xyxy: Tensor,
    priors_cxcywh: Tensor,
    variances: tuple[float, float],
) -> Tensor:
    """Regression targets of boxes against the priors they are matched to.

    Args:
        boxes_xyxy: ``[..., P, 4]`` matched ground-truth boxes, normalised xyxy.
        priors_cxcywh: ``[P, 4]`` priors, normalised (cx, cy, w, h).
        variances: scale of the centre offsets and of the log size ratios.

    Returns:
        ``[..., P, 4]`` offsets (dcx, dcy, dw, dh) as SSD defines them.
    """
    boxes_cxcywh = xyxy_to_cxcywh(boxes_xyxy)
    prior_centres, prior_sizes = priors_cxcywh[..., :2], priors_cxcywh[..., 2:]
    centre_offsets = (boxes_cxcywh[..., :2] - prior_centres) / (variances[0] * prior_sizes)
    # Degenerate (zero-size) boxes never reach here for positives, but unmatched rows
    # may hold zeros; clamp so log() stays finite for them too.
    size_ratios = (boxes_cxcywh[..., 2:] / prior_sizes).clamp(min=1e-12)
    size_offsets = torch.log(size_ratios) / variances[1]
    return torch.cat([centre_offsets, size_offsets], dim=-1)


def decode(
    offsets: Tensor,
    priors_cxcywh: Tensor,
    variances: tuple[float, float],
) -> Tensor:
    """Boxes from predicted offsets; the inverse of :func:`encode`.

    Args:
        offsets: ``[..., P, 4]`` predicted (dcx, dcy, dw, dh).
        priors_cxcywh: ``[P, 4]`` priors, normalised (cx, cy, w, h).
        variances: the variances the offsets were encoded with.

    Returns:
        ``[..., P, 4]`` normalised xyxy boxes, in the dtype of ``offsets``.
    """
    priors_cxcywh = priors_cxcywh.to(offsets.dtype)
    prior_centres, prior_sizes = priors_cxcywh[..., :2], priors_cxcywh[..., 2:]
    centres = prior_centres + offsets[..., :2] * variances[0] * prior_sizes
    log_scales = (offsets[..., 2:] * variances[1]).clamp(max=MAX_LOG_SCALE)
    sizes = prior_sizes * torch.exp(log_scales)
    return cxcywh_to_xyxy(torch.cat([centres, sizes], dim=-1))
