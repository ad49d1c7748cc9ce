"""From raw head outputs to per-image detections: softmax, top-k, decode, class-aware NMS
(greedy, or Soft-NMS)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import nms

from layers.box_coding import decode
from utils.boxes import IouRows, pairwise_intersection

NmsMethod = Literal["hard", "soft_linear", "soft_gaussian"]
NMS_METHODS: tuple[str, ...] = ("hard", "soft_linear", "soft_gaussian")


def postprocess(
    loc_pred: Tensor,
    conf_logits: Tensor,
    priors_cxcywh: Tensor,
    *,
    variances: tuple[float, float],
    score_threshold: float,
    pre_nms_topk: int,
    nms_iou_threshold: float,
    max_detections: int,
    nms: NmsMethod,
    soft_nms_sigma: float,
) -> list[dict[str, Tensor]]:
    """Detections for a batch, computed for all images and classes at once.

    The result is that of the reference's loop: per image and class, the
    ``pre_nms_topk`` highest-scoring priors above ``score_threshold`` go through greedy
    NMS; each image then keeps its ``max_detections`` best survivors. NMS does not look
    at most of those candidates: a box's fate depends only on higher-scoring boxes of
    its class, so NMS over each image's ``M`` best candidates gives the exact survivors
    among them. When at least ``max_detections`` survive, or the ``M`` include every
    candidate above the threshold, the answer is complete; otherwise ``M`` doubles
    (rarely: it starts at 1.5 x ``max_detections``). Shapes are fixed within a round;
    the host waits once per round.

    Args:
        loc_pred: ``[B, P, 4]`` predicted offsets.
        conf_logits: ``[B, P, C]`` class logits, class 0 is background.
        priors_cxcywh: ``[P, 4]`` normalised priors.
        variances: box-coding variances.
        score_threshold: scores at or below it are dropped.
        pre_nms_topk: candidates per image and class entering NMS.
        nms_iou_threshold: IoU above which the lower-scoring box is suppressed.
        max_detections: detections kept per image.
        nms: ``hard`` (the above), or ``soft_linear``/``soft_gaussian``: the same
            candidates go through :func:`soft_nms` instead (``nms_iou_threshold`` is the
            linear decay's threshold, ``soft_nms_sigma`` the Gaussian's width).
        soft_nms_sigma: the Gaussian Soft-NMS width.

    Returns:
        One dict per image: ``boxes`` ``[D, 4]`` normalised xyxy clipped to [0, 1],
        ``scores`` ``[D]`` sorted descending, ``labels`` ``[D]`` int64 in 1..C-1.
    """
    if nms != "hard":
        return _soft_postprocess(
            loc_pred,
            conf_logits,
            priors_cxcywh,
            variances=variances,
            score_threshold=score_threshold,
            pre_nms_topk=pre_nms_topk,
            nms_iou_threshold=nms_iou_threshold,
            max_detections=max_detections,
            nms=nms,
            soft_nms_sigma=soft_nms_sigma,
        )
    batch_size, num_priors, num_classes = conf_logits.shape
    num_foreground = num_classes - 1
    scores = class_scores_of(conf_logits)  # [B, C-1, P]
    per_class = min(pre_nms_topk, num_priors)
    class_scores, class_priors = topk_lowest_first(scores, per_class, ordered=False)  # [B, C-1, K]
    classes = torch.arange(num_foreground, device=scores.device)[None, :, None]
    candidate_scores = class_scores.reshape(batch_size, -1)  # [B, (C-1)*K]
    candidate_index = (class_priors * num_foreground + classes).reshape(batch_size, -1)
    total = candidate_scores.shape[1]
    # No image has more than ``above`` candidates worth looking at.
    above = int((candidate_scores > score_threshold).sum(dim=1).max())
    budget = max(min(total, above, max_detections * 3 // 2), 1)
    # Candidates ordered by prior * (C-1) + class, so that ties in score go to the lower
    # prior, then the lower class.
    candidate_index, order = candidate_index.sort(dim=1)
    candidate_scores = candidate_scores.gather(1, order)
    while True:
        top_scores, position = topk_lowest_first(candidate_scores, budget)  # [B, M]
        top_index = candidate_index.gather(1, position)  # prior * (C-1) + class
        prior_index = top_index // num_foreground
        class_index = top_index % num_foreground  # [B, M], 0-based foreground class
        valid = top_scores > score_threshold
        offsets = torch.gather(loc_pred.float(), 1, prior_index[:, :, None].expand(-1, -1, 4))
        priors = priors_cxcywh.float()[prior_index]  # [B, M, 4]
        boxes = decode(offsets, priors, variances).clamp(0.0, 1.0)  # [B, M, 4]
        keep = _per_class_nms(boxes, class_index, valid, nms_iou_threshold)  # [B, M]
        complete = (keep.sum(dim=1) >= max_detections) | (top_scores[:, -1] <= score_threshold)
        if budget >= above or bool(complete.all()):
            break
        budget = min(total, 2 * budget)

    survivor_scores = torch.where(keep, top_scores, -1.0)
    num_kept = min(max_detections, budget)
    best_scores, best = survivor_scores.sort(dim=1, descending=True, stable=True)
    best_scores, best = best_scores[:, :num_kept], best[:, :num_kept]  # [B, D]
    best_boxes = torch.gather(boxes, 1, best[:, :, None].expand(-1, -1, 4))  # [B, D, 4]
    best_labels = torch.gather(class_index, 1, best) + 1  # [B, D]
    counts = (best_scores >= 0).sum(dim=1).tolist()
    return [
        {
            "boxes": best_boxes[image, :count],
            "scores": best_scores[image, :count],
            "labels": best_labels[image, :count],
        }
        for image, count in enumerate(counts)
    ]


def class_scores_of(conf_logits: Tensor) -> Tensor:
    """``[B, C-1, P]`` foreground class probabilities from ``[B, P, C]`` logits: the
    softmax over the classes, laid out class by class for the per-class top-k. Taken
    over a ``[B, C, P]`` copy: PyTorch's softmax along a last dimension of a few
    classes is 20 times slower on a CPU (0.57 against 0.03 ms for BCCD's 9,456 x 4)."""
    return F.softmax(conf_logits.float().transpose(1, 2).contiguous(), dim=1)[:, 1:]


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    *,
    method: NmsMethod,
    iou_threshold: float,
    sigma: float,
    score_threshold: float,
    max_kept: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Soft-NMS (Bodla et al. 2017) of one class's boxes.

    Repeatedly takes the highest-scoring box left (ties: the lower index) and lowers the
    scores of the others by their IoU with it: ``soft_linear`` multiplies a score by
    ``1 - IoU`` where IoU > ``iou_threshold``, ``soft_gaussian`` by
    ``exp(-IoU^2 / sigma)``. A box whose score falls to ``score_threshold`` or below is
    dropped. ``method="hard"`` is greedy NMS in the same loop (the score drops to 0
    where IoU > ``iou_threshold``). With ``max_kept`` it stops after taking that many:
    the boxes it takes are those of the full run, up to there.

    Args:
        boxes: ``[N, 4]`` xyxy.
        scores: ``[N]``.

    Returns:
        The indices of the boxes kept ``[K]`` int64, in the order taken, and their
        scores after the decay ``[K]`` (non-increasing).
    """
    if method not in NMS_METHODS:
        raise ValueError(f"unknown NMS method {method!r}; expected one of {', '.join(NMS_METHODS)}")
    # One row of IoUs per box taken, in numpy (torchvision's formula in float32; the
    # same values as its box_iou): a crowded class takes a few dozen of its hundreds of
    # candidates, so the rows cost a tenth of the full matrix.
    iou_row = IouRows(boxes.detach().float().cpu().numpy())
    current = scores.detach().float().cpu().numpy().astype(np.float64)
    alive = current > score_threshold
    taken, taken_scores = [], []
    limit = len(current) if max_kept is None else max_kept
    while alive.any() and len(taken) < limit:
        index = int(np.argmax(np.where(alive, current, -np.inf)))
        taken.append(index)
        taken_scores.append(current[index])
        alive[index] = False
        overlap = iou_row(index).astype(np.float64)
        if method == "soft_gaussian":
            decay = np.exp(-(overlap**2) / sigma)
        elif method == "soft_linear":
            decay = np.where(overlap > iou_threshold, 1.0 - overlap, 1.0)
        else:
            decay = np.where(overlap > iou_threshold, 0.0, 1.0)
        current *= decay  # boxes no longer alive are never read again
        alive &= current > score_threshold
    return (
        torch.tensor(taken, dtype=torch.int64, device=boxes.device),
        torch.tensor(taken_scores, dtype=scores.dtype, device=scores.device),
    )


def _soft_postprocess(
    loc_pred: Tensor,
    conf_logits: Tensor,
    priors_cxcywh: Tensor,
    *,
    variances: tuple[float, float],
    score_threshold: float,
    pre_nms_topk: int,
    nms_iou_threshold: float,
    max_detections: int,
    nms: NmsMethod,
    soft_nms_sigma: float,
) -> list[dict[str, Tensor]]:
    """:func:`postprocess` with :func:`soft_nms`: per image and class, the
    ``pre_nms_topk`` best priors above the threshold, decoded, through Soft-NMS; then
    each image's ``max_detections`` highest decayed scores."""
    batch_size, num_priors, num_classes = conf_logits.shape
    class_scores, class_priors = topk_lowest_first(
        class_scores_of(conf_logits), min(pre_nms_topk, num_priors)
    )  # [B, C-1, K], descending
    results = []
    for image in range(batch_size):
        boxes_of, scores_of, labels_of = [], [], []
        for class_index in range(num_classes - 1):
            above = class_scores[image, class_index] > score_threshold
            prior_index = class_priors[image, class_index][above]
            if prior_index.numel() == 0:
                continue
            boxes = decode(
                loc_pred[image, prior_index].float(), priors_cxcywh[prior_index].float(), variances
            ).clamp(0.0, 1.0)  # [K, 4]
            kept, kept_scores = soft_nms(
                boxes,
                class_scores[image, class_index][above],
                method=nms,
                iou_threshold=nms_iou_threshold,
                sigma=soft_nms_sigma,
                score_threshold=score_threshold,
                # The image keeps its max_detections best: a class's later ones, all
                # scoring below its first max_detections, cannot be among them.
                max_kept=max_detections,
            )
            boxes_of.append(boxes[kept])
            scores_of.append(kept_scores)
            labels_of.append(torch.full_like(kept, class_index + 1))
        if not boxes_of:
            empty = loc_pred.new_zeros((0,), dtype=torch.float32)
            results.append(
                {
                    "boxes": empty.reshape(0, 4),
                    "scores": empty,
                    "labels": torch.zeros(0, dtype=torch.int64, device=loc_pred.device),
                }
            )
            continue
        all_scores = torch.cat(scores_of)
        order = all_scores.argsort(descending=True, stable=True)[:max_detections]
        results.append(
            {
                "boxes": torch.cat(boxes_of)[order],
                "scores": all_scores[order],
                "labels": torch.cat(labels_of)[order],
            }
        )
    return results


def topk_lowest_first(values: Tensor, k: int, *, ordered: bool = True) -> tuple[Tensor, Tensor]:
    """The ``k`` largest of ``values`` ``[..., N]`` along the last axis where ties go to
    the lower index, in which values are chosen and (``ordered``) in their order:
    descending, then by index. ``Tensor.topk`` promises neither; ONNX's ``TopK`` does.

    Returns ``[..., k]`` values and indices (in no particular order unless ``ordered``)."""
    top, index = values.topk(k, dim=-1)
    kth = top[..., -1:]
    at_least = values >= kth
    if not bool((at_least.sum(dim=-1) == k).all()):
        # Some row has more values equal to its k-th than places: the lowest indices.
        tied = values == kth
        slots = k - (at_least & ~tied).sum(dim=-1, keepdim=True)
        chosen = (at_least & ~tied) | (tied & (tied.cumsum(dim=-1) <= slots))
        index = chosen.nonzero()[:, -1].reshape(index.shape)
        top = values.gather(-1, index)
    if not ordered:
        return top, index
    index, order = index.sort(dim=-1)
    top, order = top.gather(-1, order).sort(dim=-1, descending=True, stable=True)
    return top, index.gather(-1, order)


def _per_class_nms(
    boxes: Tensor, class_index: Tensor, valid: Tensor, iou_threshold: float
) -> Tensor:
    """Class-aware NMS of ``[B, M]`` candidates sorted by score in each row.

    On GPUs, :func:`nms_keep_mask` does the whole batch at once. On the CPU the
    ``M x M`` comparison matrix costs more than comparing only boxes of one class, so
    each (image, class) group goes through ``torchvision.ops.nms`` instead; the groups
    are found with one sort, and there are at most ``B * (C-1)`` of them.
    """
    if boxes.device.type != "cpu":
        return nms_keep_mask(boxes, class_index, valid, iou_threshold)
    keep = torch.zeros_like(valid)
    rows, columns = torch.nonzero(valid, as_tuple=True)  # row-major: score order per image
    if rows.numel() == 0:
        return keep
    group = rows * (int(class_index.max()) + 1) + class_index[rows, columns]
    group, order = group.sort(stable=True)  # by (image, class), score order kept inside
    rows, columns = rows[order], columns[order]
    _, counts = torch.unique_consecutive(group, return_counts=True)
    flat_boxes = boxes[rows, columns]  # [N, 4]
    # Scores only fix the order, which the candidates already have.
    ranks = -torch.arange(rows.numel(), dtype=torch.float32)
    start = 0
    kept_positions = []
    for count in counts.tolist():
        kept = nms(flat_boxes[start : start + count], ranks[start : start + count], iou_threshold)
        kept_positions.append(kept + start)
        start += count
    kept_positions = torch.cat(kept_positions)
    keep[rows[kept_positions], columns[kept_positions]] = True
    return keep


def nms_keep_mask(
    boxes: Tensor, labels: Tensor | None, valid: Tensor, iou_threshold: float
) -> Tensor:
    """Greedy class-aware NMS in each row of a batch, as tensor operations.

    Args:
        boxes: ``[B, M, 4]`` xyxy, each row sorted by decreasing score.
        labels: ``[B, M]`` classes; boxes of different classes never suppress each other
            (``None``: one class per row).
        valid: ``[B, M]`` candidates taking part.
        iou_threshold: a box is suppressed by a kept higher-scoring box of its class
            with IoU above it.

    Returns:
        ``[B, M]`` bool, the boxes kept (a subset of ``valid``).

    With ``over[i, j]`` = "box i scores higher than box j, has its class and overlaps it
    above the threshold", greedy NMS keeps exactly the fixed point of ``keep_j = valid_j
    and no kept i has over[i, j]``. Iterating from "all valid kept" settles at least
    one more box per round in score order, so the iteration reaches the greedy result;
    suppression chains are short, so it takes a few rounds. Convergence is checked every
    4 rounds (a host synchronisation on GPUs).
    """
    x1, y1, x2, y2 = boxes.unbind(-1)  # [B, M] each
    area = (x2 - x1) * (y2 - y1)
    inter = pairwise_intersection(boxes, boxes)  # [B, M, M]
    # IoU > t  <=>  inter * (1 + t) > t * (area_i + area_j), without a division.
    over = inter * (1 + iou_threshold) > (area[:, :, None] + area[:, None, :]) * iou_threshold
    if labels is not None:
        over &= labels[:, :, None] == labels[:, None, :]
    over &= valid[:, :, None]
    over = over.triu_(diagonal=1)
    keep = valid
    for round_index in range(1, boxes.shape[1] + 1):
        updated = valid & ~(keep[:, :, None] & over).any(dim=1)
        if round_index % 4 == 0 and torch.equal(updated, keep):
            break
        keep = updated
    return keep


class PostProcessor(nn.Module):
    """:func:`postprocess` with its priors and settings bound; see there for arguments."""

    def __init__(
        self,
        *,
        priors_cxcywh: Tensor,
        variances: tuple[float, float],
        score_threshold: float,
        pre_nms_topk: int,
        nms_iou_threshold: float,
        max_detections: int,
        nms: NmsMethod,
        soft_nms_sigma: float,
    ) -> None:
        super().__init__()
        if nms not in NMS_METHODS:
            raise ValueError(
                f"unknown NMS method {nms!r}; expected one of {', '.join(NMS_METHODS)}"
            )
        self.register_buffer("priors_cxcywh", priors_cxcywh.clone(), persistent=False)
        self.variances = variances
        self.score_threshold = score_threshold
        self.pre_nms_topk = pre_nms_topk
        self.nms_iou_threshold = nms_iou_threshold
        self.max_detections = max_detections
        self.nms = nms
        self.soft_nms_sigma = soft_nms_sigma

    def forward(self, loc_pred: Tensor, conf_logits: Tensor) -> list[dict[str, Tensor]]:
        return postprocess(
            loc_pred,
            conf_logits,
            self.priors_cxcywh,
            variances=self.variances,
            score_threshold=self.score_threshold,
            pre_nms_topk=self.pre_nms_topk,
            nms_iou_threshold=self.nms_iou_threshold,
            max_detections=self.max_detections,
            nms=self.nms,
            soft_nms_sigma=self.soft_nms_sigma,
        )
