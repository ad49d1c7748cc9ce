"""The loops shared by the scripts: one training epoch, batched prediction, evaluation."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.records import AnnotationRecord
from utils.distributed import DistributedContext, all_reduce_mean, broadcast_flag
from utils.log import MetricsWriter
from utils.metrics import evaluate_voc
from utils.timing import synchronize

logger = logging.getLogger(__name__)


@dataclass
class TrainState:
    """What the loop advances and a checkpoint stores."""

    iteration: int = 0
    best_metric: float = -math.inf
    best_iteration: int = -1


@dataclass
class StopRequest:
    """Set by a signal handler; the loop stops after the current iteration."""

    requested: bool = False
    reason: str = ""

    def request(self, reason: str) -> None:
        self.requested = True
        self.reason = reason


@dataclass
class EpochResult:
    """How an epoch ended: ``stop_reason`` is None when it ran to the end, else
    ``signal``, ``stop_at`` or ``nonfinite`` with ``message`` saying why."""

    stop_reason: str | None = None
    message: str = ""
    images: int = 0  # trained on in this call (this rank)
    seconds: float = 0.0  # wall clock of this call, data loading included


def progress_bar(iterable: Any, **kwargs: Any) -> tqdm:
    """tqdm that redraws at most every 30 s when stderr is not a terminal (log files)."""
    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", 30.0)
    return tqdm(iterable, dynamic_ncols=True, leave=False, **kwargs)


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def mixup_batch(
    images: Tensor,
    boxes: list[Tensor],
    labels: list[Tensor],
    rng: np.random.Generator,
    alpha: float,
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Blend each image with another of the batch (weight ~ Beta(alpha, alpha)) and give
    it the boxes of both."""
    batch_size = images.shape[0]
    weight = float(rng.beta(alpha, alpha))
    partner = torch.from_numpy(rng.permutation(batch_size)).to(images.device)
    mixed = images.float() * weight + images[partner].float() * (1 - weight)
    partner_list = partner.tolist()
    mixed_boxes = [torch.cat([boxes[i], boxes[j]]) for i, j in enumerate(partner_list)]
    mixed_labels = [torch.cat([labels[i], labels[j]]) for i, j in enumerate(partner_list)]
    return mixed, mixed_boxes, mixed_labels


def add_bn_sparsity_gradient(norms: Sequence[nn.BatchNorm2d], strength: float) -> None:
    """Network slimming's L1 penalty on BatchNorm scales: grad += strength * sign(gamma)."""
    for norm in norms:
        if norm.weight.grad is not None:
            norm.weight.grad.add_(torch.sign(norm.weight.detach()), alpha=strength)


def bn_scales(norms: Sequence[nn.BatchNorm2d]) -> Tensor:
    """|gamma| of the given BatchNorm layers, concatenated (for the slimming histogram)."""
    scales = [norm.weight.detach().abs().flatten() for norm in norms]
    return torch.cat(scales) if scales else torch.zeros(0)


def train_one_epoch(
    *,
    model: nn.Module,
    loss_fn: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    epoch: int,
    state: TrainState,
    context: DistributedContext,
    writer: MetricsWriter,
    stop: StopRequest,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    grad_clip_norm: float = 0.0,
    sparsity: float = 0.0,
    sparse_norms: Sequence[nn.BatchNorm2d] = (),
    mixup_prob: float = 0.0,
    mixup_alpha: float = 1.5,
    seed: int = 0,
    log_interval: int = 20,
    stop_at_iteration: int | None = None,
) -> EpochResult:
    """Train over the loader's batches (the rest of the epoch, when resuming).

    Each iteration: forward (under autocast when ``autocast_dtype``), multibox loss,
    a check that the loss is finite, backward through the scaler, the sparsity
    subgradient, gradient clipping, the optimiser and scheduler steps. Losses and the
    LR go to the writer every ``log_interval`` iterations and to the progress bar.
    """
    model.train()
    start = time.perf_counter()
    images_seen = 0
    progress = progress_bar(loader, desc=f"epoch {epoch + 1}", disable=not context.is_main)
    for batch in progress:
        if batch["images"].shape[0] == 0:
            continue
        images = batch["images"].to(device, non_blocking=True)
        boxes = [item.to(device, non_blocking=True) for item in batch["boxes"]]
        labels = [item.to(device, non_blocking=True) for item in batch["labels"]]
        if mixup_prob > 0:
            rng = np.random.default_rng([seed, state.iteration, context.rank])
            if rng.random() < mixup_prob:
                images, boxes, labels = mixup_batch(images, boxes, labels, rng, mixup_alpha)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast_context(device, autocast_dtype):
            loc, conf = model(images)
        losses = loss_fn(loc, conf, boxes, labels)
        loss = losses["loss"]
        # One host sync for every logged value and the finiteness check.
        stacked = torch.stack([value.detach().float() for value in losses.values()])
        values = dict(zip(losses.keys(), stacked.tolist(), strict=True))
        nonfinite = not math.isfinite(values["loss"])
        if broadcast_flag(nonfinite, context, device):
            message = (
                f"loss is {values['loss']} at iteration {state.iteration + 1} (epoch {epoch + 1}); "
                "stopped before the update, so the model is unchanged. Lower solver.lr or set "
                "solver.grad_clip_norm"
            )
            return EpochResult(stop_reason="nonfinite", message=message)

        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if sparsity > 0 or grad_clip_norm > 0:
            scaler.unscale_(optimizer)
        if sparsity > 0:
            add_bn_sparsity_gradient(sparse_norms, sparsity)
        if grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
        scaler.step(optimizer)
        scaler.update()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        state.iteration += 1

        images_seen += images.shape[0]
        progress.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{lr:.2e}", refresh=False)
        if state.iteration % log_interval == 0:
            mean_loss = all_reduce_mean(loss.detach(), context).item()
            writer.write("train", state.iteration, epoch, {**values, "loss": mean_loss, "lr": lr})

        if broadcast_flag(stop.requested, context, device):
            return EpochResult(
                stop_reason="signal",
                message=stop.reason or "stop requested",
                images=images_seen,
                seconds=time.perf_counter() - start,
            )
        if stop_at_iteration is not None and state.iteration >= stop_at_iteration:
            return EpochResult(
                stop_reason="stop_at",
                message=f"stopped at iteration {state.iteration} as asked",
                images=images_seen,
                seconds=time.perf_counter() - start,
            )
    progress.close()
    return EpochResult(images=images_seen, seconds=time.perf_counter() - start)


@dataclass
class Timing:
    """Seconds spent in the forward pass and in post-processing, and images seen."""

    forward_seconds: float = 0.0
    postprocess_seconds: float = 0.0
    images: int = 0

    def ms_per_image(self) -> dict[str, float]:
        images = max(self.images, 1)
        forward = 1000 * self.forward_seconds / images
        post = 1000 * self.postprocess_seconds / images
        return {
            "forward_ms": forward,
            "postprocess_ms": post,
            "fps": 1000.0 / (forward + post) if forward + post > 0 else float("nan"),
        }


@torch.inference_mode()
def predict(
    model: nn.Module,
    postprocessor: nn.Module,
    loader: DataLoader,
    device: torch.device,
    *,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    show_progress: bool = True,
) -> tuple[list[dict[str, np.ndarray] | None], Timing]:
    """Detections for every image of the loader's dataset, in its original pixels.

    Returns a list indexed like the dataset (``None`` for images that could not be
    read): ``boxes`` ``[D, 4]`` xyxy float32, ``scores`` ``[D]``, ``labels`` ``[D]``
    (1..C-1); and the forward/post-processing timing (CUDA-synchronised).
    """
    model.eval()
    results: list[dict[str, np.ndarray] | None] = [None] * len(loader.dataset)
    timing = Timing()
    for batch in progress_bar(loader, desc="predict", disable=not show_progress):
        if batch["images"].shape[0] == 0:
            continue
        images = batch["images"].to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        synchronize(device)
        start = time.perf_counter()
        with autocast_context(device, autocast_dtype):
            loc, conf = model(images)
        synchronize(device)
        middle = time.perf_counter()
        detections = postprocessor(loc, conf)
        synchronize(device)
        timing.forward_seconds += middle - start
        timing.postprocess_seconds += time.perf_counter() - middle
        timing.images += images.shape[0]
        for detection, index, (height, width) in zip(
            detections, batch["indices"], batch["orig_sizes"], strict=True
        ):
            scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=device)
            results[index] = {
                "boxes": (detection["boxes"] * scale).cpu().numpy(),
                "scores": detection["scores"].cpu().numpy(),
                "labels": detection["labels"].cpu().numpy(),
            }
    return results, timing


def ground_truth_of(records: Sequence[AnnotationRecord]) -> list[dict[str, np.ndarray]]:
    return [
        {"boxes": record.boxes, "labels": record.labels, "difficult": record.difficult}
        for record in records
    ]


def evaluate_detections(
    records: Sequence[AnnotationRecord],
    detections: Sequence[dict[str, np.ndarray] | None],
    class_names: Sequence[str],
    *,
    metric: str = "voc07",
    iou_threshold: float = 0.5,
) -> dict[str, Any]:
    """VOC07 (11-point) or VOC2010+ (area) mAP of ``detections`` against the records.

    Images whose detections are ``None`` (unreadable) count as having none.
    """
    if metric not in ("voc07", "voc10"):
        raise ValueError(f"metric {metric!r}: evaluate_detections computes voc07 or voc10")
    empty = {
        "boxes": np.zeros((0, 4)),
        "scores": np.zeros(0),
        "labels": np.zeros(0, dtype=np.int64),
    }
    result = evaluate_voc(
        ground_truth_of(records),
        [item if item is not None else empty for item in detections],
        class_names,
        iou_threshold=iou_threshold,
        use_07_metric=metric == "voc07",
    )
    return {
        "metric": metric,
        "mAP": result["mAP"],
        "ap_per_class": result["ap_per_class"],
        "curves": result["curves"],
    }
