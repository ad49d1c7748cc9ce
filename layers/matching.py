"""Assigning ground-truth boxes to priors (SSD's bipartite + threshold matching)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from torchvision.ops import box_iou


def match_priors(
    gt_boxes: Sequence[Tensor],
    gt_labels: Sequence[Tensor],
    priors_xyxy: Tensor,
    iou_threshold: float,
) -> tuple[Tensor, Tensor]:
    """Match every prior of every image to a ground-truth box or to background.

    Each ground-truth box first takes the prior it overlaps most, even below the
    threshold, so no object goes unlearned; every other prior is positive when its best
    IoU with a ground-truth box is at least ``iou_threshold``. When two ground-truth
    boxes share the same best prior, the later one in the image keeps it (the order the
    reference implementation resolves it in).

    The whole batch is matched at once: boxes are padded to the largest count.

    Args:
        gt_boxes: per image, ``[G, 4]`` normalised xyxy boxes (``G`` may be 0).
        gt_labels: per image, ``[G]`` labels in 1..C-1 (0 is background).
        priors_xyxy: ``[P, 4]`` normalised xyxy priors.
        iou_threshold: IoU at or above which a prior is positive.

    Returns:
        matched_boxes: ``[B, P, 4]`` the box each prior is matched to (zeros for
            background).
        matched_labels: ``[B, P]`` int64 labels, 0 for background.
    """
    if len(gt_boxes) != len(gt_labels):
        raise ValueError(f"{len(gt_boxes)} box tensors but {len(gt_labels)} label tensors")
    batch_size, num_priors = len(gt_boxes), priors_xyxy.shape[0]
    device = priors_xyxy.device
    counts = [int(boxes.shape[0]) for boxes in gt_boxes]
    max_gt = max(counts, default=0)
    matched_boxes = priors_xyxy.new_zeros(batch_size, num_priors, 4)
    matched_labels = torch.zeros(batch_size, num_priors, dtype=torch.int64, device=device)
    if max_gt == 0:
        return matched_boxes, matched_labels

    # Padded ground truth: [B, G, 4], [B, G], validity mask [B, G].
    padded_boxes = pad_sequence(
        [boxes.to(device=device, dtype=priors_xyxy.dtype) for boxes in gt_boxes],
        batch_first=True,
    )
    padded_labels = pad_sequence(
        [labels.to(device=device, dtype=torch.int64) for labels in gt_labels], batch_first=True
    )
    count_tensor = torch.tensor(counts, device=device)
    valid = torch.arange(max_gt, device=device)[None, :] < count_tensor[:, None]

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
