"""SSD's multibox loss: a box regression term on positives (SSD's smooth-L1 on encoded
offsets, or an IoU loss on the decoded boxes: GIoU, DIoU, CIoU) and cross-entropy with
hard negative mining."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import complete_box_iou_loss, distance_box_iou_loss, generalized_box_iou_loss

from layers.box_coding import decode, encode
from layers.matching import match_priors
from utils.boxes import cxcywh_to_xyxy

BoxLoss = Literal["smooth_l1", "giou", "diou", "ciou"]
BOX_LOSSES: tuple[str, ...] = ("smooth_l1", "giou", "diou", "ciou")
_IOU_LOSSES = {
    "giou": generalized_box_iou_loss,
    "diou": distance_box_iou_loss,
    "ciou": complete_box_iou_loss,
}


def box_regression_loss(
    loc_pred: Tensor,
    matched_boxes_xyxy: Tensor,
    positive: Tensor,
    priors_cxcywh: Tensor,
    *,
    variances: tuple[float, float],
    kind: BoxLoss,
) -> Tensor:
    """Each prior's box regression loss (meaningful on positives only).

    ``smooth_l1`` is SSD's: smooth-L1 (beta 1) on each of the four encoded offsets.
    ``giou``/``diou``/``ciou`` decode the predicted offsets and take
    1 - GIoU (Rezatofighi et al. 2019), 1 - DIoU or 1 - CIoU (Zheng et al. 2020) of the
    decoded box and its ground truth: they score the overlap that AP measures, and do
    not depend on the variances' scale.

    Args:
        loc_pred: ``[B, P, 4]`` predicted offsets.
        matched_boxes_xyxy: ``[B, P, 4]`` normalised ground-truth box of each prior.
        positive: ``[B, P]`` bool, priors matched to an object.
        priors_cxcywh: ``[P, 4]`` normalised priors.
        variances: box-coding variances.
        kind: one of :data:`BOX_LOSSES`.

    Returns:
        ``[B, P, K]`` float32 loss terms per prior, to be summed: ``K`` = 4 coordinates
        for ``smooth_l1``, 1 for the IoU losses.
    """
    loc_pred = loc_pred.float()
    if kind == "smooth_l1":
        loc_targets = encode(matched_boxes_xyxy, priors_cxcywh, variances)
        return F.smooth_l1_loss(loc_pred, loc_targets.float(), reduction="none", beta=1.0)
    if kind not in _IOU_LOSSES:
        raise ValueError(f"unknown box loss {kind!r}; expected one of {', '.join(BOX_LOSSES)}")
    predicted = decode(loc_pred, priors_cxcywh, variances)  # [B, P, 4]
    # Background priors have no box: pair them with their prior so that nothing
    # degenerate (a zero box) enters the IoU, whose gradient is masked off anyway.
    priors_xyxy = cxcywh_to_xyxy(priors_cxcywh.float()).expand_as(predicted)
    targets = torch.where(positive[:, :, None], matched_boxes_xyxy.float(), priors_xyxy)
    loss = _IOU_LOSSES[kind](predicted.reshape(-1, 4), targets.reshape(-1, 4), reduction="none")
    return loss.reshape(*positive.shape, 1)


def hard_negative_mask(
    background_loss: Tensor,
    positive: Tensor,
    *,
    neg_pos_ratio: int,
    min_negatives: int,
) -> Tensor:
    """Pick, per image, the negatives with the highest classification loss.

    Each image keeps ``neg_pos_ratio`` negatives per positive (at least
    ``min_negatives``, at most all of its negatives).

    Args:
        background_loss: ``[B, P]`` cross-entropy of each prior against background.
        positive: ``[B, P]`` bool, priors matched to an object.
        neg_pos_ratio: negatives kept per positive.
        min_negatives: negatives kept in an image even when it has no positives.

    Returns:
        ``[B, P]`` bool mask of the chosen negatives (never overlapping ``positive``).
    """
    num_priors = positive.shape[1]
    num_positive = positive.sum(dim=1, keepdim=True)  # [B, 1]
    num_negative = (neg_pos_ratio * num_positive).clamp(min=min_negatives)
    num_negative = torch.minimum(num_negative, num_priors - num_positive)
    # Positives sort last; a stable sort keeps ties in prior order, so runs repeat.
    ranking_loss = background_loss.detach().masked_fill(positive, float("-inf"))
    order = ranking_loss.argsort(dim=1, descending=True, stable=True)
    rank = order.argsort(dim=1)  # [B, P] position of each prior in the ranking
    return rank < num_negative


def multibox_loss(
    loc_loss_per_prior: Tensor,
    conf_logits: Tensor,
    labels: Tensor,
    *,
    neg_pos_ratio: int,
    min_negatives: int,
    loc_weight: float,
) -> dict[str, Tensor]:
    """Loss from already-matched targets.

    Both terms are summed over the batch and divided by ``max(num_positives, 1)``.

    Args:
        loc_loss_per_prior: ``[B, P, K]`` box regression loss terms of each prior
            (:func:`box_regression_loss`); only positives count.
        conf_logits: ``[B, P, C]`` class logits, class 0 is background.
        labels: ``[B, P]`` int64 matched labels, 0 for background.
        neg_pos_ratio: negatives kept per positive in hard negative mining.
        min_negatives: negatives kept per image even without positives.
        loc_weight: weight of the localisation term (SSD's alpha).

    Returns:
        ``loss`` (total), ``loc_loss``, ``conf_loss`` and ``num_positives``, all scalars.
    """
    num_classes = conf_logits.shape[-1]
    positive = labels > 0  # [B, P]
    # Float32 for the losses: under autocast the logits may be fp16/bf16.
    conf_loss_per_prior = F.cross_entropy(
        conf_logits.float().reshape(-1, num_classes), labels.reshape(-1), reduction="none"
    ).reshape(labels.shape)  # [B, P]
    negative = hard_negative_mask(
        conf_loss_per_prior,
        positive,
        neg_pos_ratio=neg_pos_ratio,
        min_negatives=min_negatives,
    )
    num_positives = positive.sum()
    normaliser = num_positives.clamp(min=1).to(torch.float32)

    # torch.where rather than a multiply: an inf on an unselected prior must not become
    # a NaN, and boolean indexing would sync with the host.
    selected = positive | negative
    conf_loss = torch.where(selected, conf_loss_per_prior, 0.0).sum() / normaliser
    # One sum over every term, as SSD's smooth-L1 always was (runs stay bit-identical).
    loc_loss = torch.where(positive[:, :, None], loc_loss_per_prior, 0.0).sum() / normaliser
    return {
        "loss": conf_loss + loc_weight * loc_loss,
        "loc_loss": loc_loss,
        "conf_loss": conf_loss,
        "num_positives": num_positives,
    }


class MultiBoxLoss(nn.Module):
    """Matches ground truth to priors, encodes targets and computes :func:`multibox_loss`.

    Args:
        priors_cxcywh: ``[P, 4]`` normalised priors in head-output order.
        iou_threshold: IoU at or above which a prior is positive.
        neg_pos_ratio: negatives kept per positive (SSD: 3).
        min_negatives: negatives kept per image without objects; 0 reproduces SSD,
            where such images add nothing to the loss.
        loc_weight: weight of the localisation term.
        variances: box-coding variances.
        box_loss: the box regression loss, one of :data:`BOX_LOSSES`
            (:func:`box_regression_loss`).
    """

    def __init__(
        self,
        *,
        priors_cxcywh: Tensor,
        iou_threshold: float,
        neg_pos_ratio: int,
        min_negatives: int,
        loc_weight: float,
        variances: tuple[float, float],
        box_loss: BoxLoss,
    ) -> None:
        super().__init__()
        if box_loss not in BOX_LOSSES:
            raise ValueError(
                f"unknown box loss {box_loss!r}; expected one of {', '.join(BOX_LOSSES)}"
            )
        self.register_buffer("priors_cxcywh", priors_cxcywh.clone(), persistent=False)
        self.register_buffer("priors_xyxy", cxcywh_to_xyxy(priors_cxcywh), persistent=False)
        self.iou_threshold = iou_threshold
        self.neg_pos_ratio = neg_pos_ratio
        self.min_negatives = min_negatives
        self.loc_weight = loc_weight
        self.variances = variances
        self.box_loss = box_loss

    def forward(
        self,
        loc_pred: Tensor,
        conf_logits: Tensor,
        gt_boxes: Sequence[Tensor] | Tensor,
        gt_labels: Sequence[Tensor] | Tensor,
    ) -> dict[str, Tensor]:
        """Args:
        loc_pred: ``[B, P, 4]`` predicted offsets.
        conf_logits: ``[B, P, C]`` class logits.
        gt_boxes: per image ``[G, 4]`` normalised xyxy boxes, or padded ``[B, G, 4]``
            (:func:`layers.matching.pad_targets`).
        gt_labels: per image ``[G]`` labels in 1..C-1, or padded ``[B, G]`` (0: padding).
        """
        num_priors = self.priors_cxcywh.shape[0]
        if loc_pred.shape[1] != num_priors or conf_logits.shape[1] != num_priors:
            raise ValueError(
                f"the model predicts {loc_pred.shape[1]} boxes but the loss has {num_priors} priors"
            )
        matched_boxes, labels = match_priors(
            gt_boxes, gt_labels, self.priors_xyxy, iou_threshold=self.iou_threshold
        )
        loc_loss_per_prior = box_regression_loss(
            loc_pred,
            matched_boxes,
            labels > 0,
            self.priors_cxcywh,
            variances=self.variances,
            kind=self.box_loss,
        )
        return multibox_loss(
            loc_loss_per_prior,
            conf_logits,
            labels,
            neg_pos_ratio=self.neg_pos_ratio,
            min_negatives=self.min_negatives,
            loc_weight=self.loc_weight,
        )
