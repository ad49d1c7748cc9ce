"""From raw head outputs to per-image detections: softmax, decode, top-k, class-aware NMS."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms

from layers.box_coding import DEFAULT_VARIANCES, decode


def postprocess(
    loc_pred: Tensor,
    conf_logits: Tensor,
    priors_cxcywh: Tensor,
    *,
    variances: tuple[float, float] = DEFAULT_VARIANCES,
    score_threshold: float = 0.01,
    pre_nms_topk: int = 200,
    nms_iou_threshold: float = 0.45,
    max_detections: int = 200,
) -> list[dict[str, Tensor]]:
    """Detections for a batch, computed for all images and classes at once.

    Per image and class, the ``pre_nms_topk`` highest-scoring priors above
    ``score_threshold`` go through NMS (``torchvision.ops.batched_nms`` keyed by image
    and class); each image then keeps its ``max_detections`` best boxes.

    Args:
        loc_pred: ``[B, P, 4]`` predicted offsets.
        conf_logits: ``[B, P, C]`` class logits, class 0 is background.
        priors_cxcywh: ``[P, 4]`` normalised priors.
        variances: box-coding variances.
        score_threshold: scores at or below it are dropped.
        pre_nms_topk: candidates per image and class entering NMS.
        nms_iou_threshold: IoU above which the lower-scoring box is suppressed.
        max_detections: detections kept per image.

    Returns:
        One dict per image: ``boxes`` ``[D, 4]`` normalised xyxy clipped to [0, 1],
        ``scores`` ``[D]`` sorted descending, ``labels`` ``[D]`` int64 in 1..C-1.
    """
    batch_size, num_priors, num_classes = conf_logits.shape
    device = conf_logits.device
    scores = F.softmax(conf_logits.float(), dim=-1)[:, :, 1:]  # [B, P, C-1]
    boxes = decode(loc_pred.float(), priors_cxcywh, variances).clamp(0.0, 1.0)  # [B, P, 4]

    num_candidates = min(pre_nms_topk, num_priors)
    top_scores, top_index = scores.transpose(1, 2).topk(num_candidates, dim=2)  # [B, C-1, K]
    top_boxes = torch.gather(
        boxes, 1, top_index.reshape(batch_size, -1, 1).expand(-1, -1, 4)
    )  # [B, (C-1)*K, 4]
    image_ids = torch.arange(batch_size, device=device)[:, None, None].expand_as(top_index)
    labels = torch.arange(1, num_classes, device=device)[None, :, None].expand_as(top_index)

    keep_mask = top_scores.reshape(-1) > score_threshold
    flat_boxes = top_boxes.reshape(-1, 4)[keep_mask]
    flat_scores = top_scores.reshape(-1)[keep_mask]
    flat_images = image_ids.reshape(-1)[keep_mask]
    flat_labels = labels.reshape(-1)[keep_mask]

    keep = batched_nms(
        flat_boxes, flat_scores, flat_images * num_classes + flat_labels, nms_iou_threshold
    )  # sorted by decreasing score
    # Group by image while keeping score order inside each image, then cap per image.
    keep = keep[torch.argsort(flat_images[keep], stable=True)]
    kept_images = flat_images[keep]
    counts = torch.bincount(kept_images, minlength=batch_size)
    starts = torch.cumsum(counts, dim=0) - counts
    rank_in_image = torch.arange(keep.numel(), device=device) - starts[kept_images]
    keep = keep[rank_in_image < max_detections]
    counts = counts.clamp(max=max_detections)

    split_sizes = counts.tolist()
    return [
        {"boxes": image_boxes, "scores": image_scores, "labels": image_labels}
        for image_boxes, image_scores, image_labels in zip(
            flat_boxes[keep].split(split_sizes),
            flat_scores[keep].split(split_sizes),
            flat_labels[keep].split(split_sizes),
            strict=True,
        )
    ]


class PostProcessor(nn.Module):
    """:func:`postprocess` with its priors and settings bound; see there for arguments."""

    def __init__(
        self,
        *,
        priors_cxcywh: Tensor,
        variances: tuple[float, float] = DEFAULT_VARIANCES,
        score_threshold: float = 0.01,
        pre_nms_topk: int = 200,
        nms_iou_threshold: float = 0.45,
        max_detections: int = 200,
    ) -> None:
        super().__init__()
        self.register_buffer("priors_cxcywh", priors_cxcywh.clone(), persistent=False)
        self.variances = variances
        self.score_threshold = score_threshold
        self.pre_nms_topk = pre_nms_topk
        self.nms_iou_threshold = nms_iou_threshold
        self.max_detections = max_detections

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
        )
