"""Assigning ground-truth boxes to priors (SSD's bipartite + threshold matching)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from utils.boxes import box_iou


def pad_targets(gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-image targets as one padded pair: boxes ``[B, G, 4]`` and labels ``[B, G]``,
    ``G`` the largest count, padding with label 0 (background: no object has it)."""
    if len(gt_boxes) != len(gt_labels):
        raise ValueError(f"{len(gt_boxes)} box tensors but {len(gt_labels)} label tensors")
    if not gt_boxes:
        return torch.zeros(0, 0, 4), torch.zeros(0, 0, dtype=torch.int64)
    boxes = pad_sequence([item.reshape(-1, 4) for item in gt_boxes], batch_first=True)
    labels = pad_sequence([item.to(torch.int64) for item in gt_labels], batch_first=True)
    return boxes, labels


def match_priors(
    gt_boxes: Sequence[Tensor] | Tensor,
    gt_labels: Sequence[Tensor] | Tensor,
    priors_xyxy: Tensor,
    iou_threshold: float,
) -> tuple[Tensor, Tensor]:
    """Match every prior of every image to a ground-truth box or to background.

    Each ground-truth box first takes the prior it overlaps most, even below the
    threshold, so no object goes unlearned; every other prior is positive when its best
    IoU with a ground-truth box is at least ``iou_threshold``. When two ground-truth
    boxes share the same best prior, the later one in the image keeps it (the order the
    reference implementation resolves it in).

    The whole batch is matched at once, on padded targets (:func:`pad_targets`; the
    loader's batches carry them, one copy to the device per batch), without reading
    anything back to the host.

    Args:
        gt_boxes: per image, ``[G, 4]`` normalised xyxy boxes (``G`` may be 0); or
            padded ``[B, G, 4]``.
        gt_labels: per image, ``[G]`` labels in 1..C-1 (0 is background); or padded
            ``[B, G]`` with 0 marking the padding.
        priors_xyxy: ``[P, 4]`` normalised xyxy priors.
        iou_threshold: IoU at or above which a prior is positive.

    Returns:
        matched_boxes: ``[B, P, 4]`` the box each prior is matched to (zeros for
            background).
        matched_labels: ``[B, P]`` int64 labels, 0 for background.
    """
    if not isinstance(gt_boxes, Tensor):
        gt_boxes, gt_labels = pad_targets(gt_boxes, gt_labels)
    device = priors_xyxy.device
    padded_boxes = gt_boxes.to(device=device, dtype=priors_xyxy.dtype)
    padded_labels = gt_labels.to(device=device, dtype=torch.int64)
    batch_size, max_gt = padded_labels.shape
    num_priors = priors_xyxy.shape[0]
    if max_gt == 0:
        matched_boxes = priors_xyxy.new_zeros(batch_size, num_priors, 4)
        return matched_boxes, torch.zeros(batch_size, num_priors, dtype=torch.int64, device=device)
    valid = padded_labels > 0  # [B, G]

    iou = box_iou(padded_boxes.reshape(-1, 4), priors_xyxy).reshape(batch_size, max_gt, -1)
    iou = iou.masked_fill(~valid[:, :, None], -1.0)  # [B, G, P]; padding never wins

    best_gt_iou, best_gt_index = iou.max(dim=1)  # [B, P]
    best_prior_index = iou.argmax(dim=2)  # [B, G]

    # Force each real ground-truth box onto its best prior. scatter_reduce with amax
    # over ground-truth indices makes the later box win ties deterministically.
    gt_index = torch.arange(max_gt, device=device).expand(batch_size, max_gt)
    forced_gt = torch.full((batch_size, num_priors), -1, dtype=torch.int64, device=device)
    forced_gt = forced_gt.scatter_reduce(
        1,
        best_prior_index.masked_fill(~valid, 0),
        gt_index.masked_fill(~valid, -1),
        reduce="amax",
    )
    is_forced = forced_gt >= 0
    best_gt_index = torch.where(is_forced, forced_gt, best_gt_index)
    positive = is_forced | (best_gt_iou >= iou_threshold)

    matched_boxes = torch.gather(
        padded_boxes, 1, best_gt_index[:, :, None].expand(batch_size, num_priors, 4)
    )
    matched_labels = torch.gather(padded_labels, 1, best_gt_index)
    matched_labels = matched_labels.masked_fill(~positive, 0)
    matched_boxes = matched_boxes.masked_fill(~positive[:, :, None], 0.0)
    return matched_boxes, matched_labels
