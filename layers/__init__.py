"""Box math and building blocks: priors, coding, matching, loss, post-processing."""

from layers.blocks import ConvBNReLU, L2Norm
from layers.box_coding import DEFAULT_VARIANCES, cxcywh_to_xyxy, decode, encode, xyxy_to_cxcywh
from layers.matching import match_priors
from layers.multibox_loss import MultiBoxLoss, hard_negative_mask, multibox_loss
from layers.postprocess import PostProcessor, postprocess
from layers.priors import PriorGenerator

__all__ = [
    "DEFAULT_VARIANCES",
    "ConvBNReLU",
    "L2Norm",
    "MultiBoxLoss",
    "PostProcessor",
    "PriorGenerator",
    "cxcywh_to_xyxy",
    "decode",
    "encode",
    "hard_negative_mask",
    "match_priors",
    "multibox_loss",
    "postprocess",
    "xyxy_to_cxcywh",
]
