"""One training epoch: forward, multibox loss, backward, the slimming penalty, clipping,
the optimiser step; with mixup, AMP and stopping on a signal or a non-finite loss."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from utils.device import autocast_context
from utils.distributed import DistributedContext, all_reduce_mean, broadcast_flag
from utils.log import MetricsWriter, progress_bar

logger = logging.getLogger(__name__)


@dataclass
class TrainState:
    """What the loop advances and a checkpoint stores."""

    iteration: int = 0
    best_metric: float = -math.inf
    best_iteration: int = -1
    # Wall clock spent before this process (a resumed run's budget goes on from it).
    elapsed_seconds: float = 0.0


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


@dataclass
class TrainingParts:
    """What an iteration updates: the network (DDP-wrapped when distributed), its loss,
    the optimiser, the LR schedule and the gradient scaler, on ``device``."""

    model: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    device: torch.device


@dataclass(frozen=True)
class EpochOptions:
    """How the iterations run (``train.*`` and ``solver.grad_clip_norm`` of the config).

    ``sparse_norms`` are the BatchNorm layers that get the slimming penalty
    ``sparsity`` * sign(gamma); ``stop_at_iteration`` ends the epoch early (``--stop-at``).
    """

    autocast_dtype: torch.dtype | None = None
    channels_last: bool = False
    grad_clip_norm: float = 0.0
    sparsity: float = 0.0
    sparse_norms: tuple[nn.BatchNorm2d, ...] = ()
    mixup_prob: float = 0.0
    mixup_alpha: float = 1.5
    seed: int = 0
    log_interval: int = 20
    stop_at_iteration: int | None = None


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
    parts: TrainingParts,
    loader: DataLoader,
    *,
    epoch: int,
    state: TrainState,
    context: DistributedContext,
    writer: MetricsWriter,
    stop: StopRequest,
    options: EpochOptions,
) -> EpochResult:
    """Train over the loader's batches (the rest of the epoch, when resuming).

    Each iteration: forward (under autocast when ``options.autocast_dtype``), multibox loss,
    a check that the loss is finite, backward through the scaler, the sparsity
    subgradient, gradient clipping, the optimiser and scheduler steps. Losses and the
    LR go to the writer every ``options.log_interval`` iterations and to the progress bar.
    """
    model, device, optimizer, scaler = parts.model, parts.device, parts.optimizer, parts.scaler
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
        if options.mixup_prob > 0:
            rng = np.random.default_rng([options.seed, state.iteration, context.rank])
            if rng.random() < options.mixup_prob:
                images, boxes, labels = mixup_batch(images, boxes, labels, rng, options.mixup_alpha)
        # Batches arrive in NHWC memory (data.loader.collate).
        memory_format = torch.channels_last if options.channels_last else torch.contiguous_format
        images = images.contiguous(memory_format=memory_format)
        with autocast_context(device, options.autocast_dtype):
            loc, conf = model(images)
        losses = parts.loss_fn(loc, conf, boxes, labels)
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
        if options.sparsity > 0 or options.grad_clip_norm > 0:
            scaler.unscale_(optimizer)
        if options.sparsity > 0:
            add_bn_sparsity_gradient(options.sparse_norms, options.sparsity)
        if options.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip_norm)
        scaler.step(optimizer)
        scaler.update()
        lr = optimizer.param_groups[0]["lr"]
        parts.scheduler.step()
        state.iteration += 1

        images_seen += images.shape[0]
        progress.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{lr:.2e}", refresh=False)
        if state.iteration % options.log_interval == 0:
            mean_loss = all_reduce_mean(loss.detach(), context).item()
            writer.write("train", state.iteration, epoch, {**values, "loss": mean_loss, "lr": lr})

        if broadcast_flag(stop.requested, context, device):
            return EpochResult(
                stop_reason="signal",
                message=stop.reason or "stop requested",
                images=images_seen,
                seconds=time.perf_counter() - start,
            )
        stop_at = options.stop_at_iteration
        if stop_at is not None and state.iteration >= stop_at:
            return EpochResult(
                stop_reason="stop_at",
                message=f"stopped at iteration {state.iteration} as asked",
                images=images_seen,
                seconds=time.perf_counter() - start,
            )
    progress.close()
    return EpochResult(images=images_seen, seconds=time.perf_counter() - start)
