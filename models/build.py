"""The one place that reads the model-related config sections and builds the parts."""

from __future__ import annotations

from torch import Tensor

from layers.multibox_loss import MultiBoxLoss
from layers.postprocess import PostProcessor
from layers.priors import PriorGenerator
from utils.config import Config, PriorConfig


def build_prior_generator(priors: PriorConfig) -> PriorGenerator:
    return PriorGenerator(
        min_sizes=priors.min_sizes,
        max_sizes=priors.max_sizes,
        aspect_ratios=priors.aspect_ratios,
        steps=priors.steps,
        clip=priors.clip,
    )


def build_loss(config: Config, priors_cxcywh: Tensor) -> MultiBoxLoss:
    return MultiBoxLoss(
        priors_cxcywh=priors_cxcywh,
        iou_threshold=config.loss.iou_threshold,
        neg_pos_ratio=config.loss.neg_pos_ratio,
        min_negatives=config.loss.min_negatives,
        loc_weight=config.loss.loc_weight,
        variances=config.priors.variances,
    )


def build_postprocessor(config: Config, priors_cxcywh: Tensor) -> PostProcessor:
    return PostProcessor(
        priors_cxcywh=priors_cxcywh,
        variances=config.priors.variances,
        score_threshold=config.postprocess.score_threshold,
        pre_nms_topk=config.postprocess.pre_nms_topk,
        nms_iou_threshold=config.postprocess.nms_iou_threshold,
        max_detections=config.postprocess.max_detections,
    )
