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

from utils.device import autocast_context, available_cores
from utils.distributed import DistributedContext, all_reduce_sum
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
    ``signal``, ``stop_at``, ``checkpoint`` (one is due; the run goes on after it) or
    ``nonfinite``, with ``message`` saying why."""

    stop_reason: str | None = None
    message: str = ""
    images: int = 0  # trained on in this call (this rank)
    seconds: float = 0.0  # wall clock of this call, data loading included
    # Of which the loop waited for batches after the first (the first waits for the
    # workers to start).
    data_seconds: float = 0.0


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
    # Seconds from the call's start after which it returns at the next logged iteration
    # with stop_reason "checkpoint" (train.checkpoint_minutes); None: never.
    checkpoint_due_in: float | None = None


# An epoch that waits for batches longer than this share of its time is short of loader
# workers: the first epoch then logs how many would keep up.
MAX_DATA_WAIT = 0.10


def loader_advice(result: EpochResult, workers: int) -> str | None:
    """How many loader workers would keep the step fed, when ``result`` (an epoch with
    ``workers`` workers) waited for data more than :data:`MAX_DATA_WAIT` of its time;
    None otherwise. A waiting step means the loader delivered all it could: its rate,
    split over the workers (over the main process without workers), against the rate of
    the step on its own."""
    if result.images == 0 or result.seconds <= 0:
        return None
    share = result.data_seconds / result.seconds
    if share <= MAX_DATA_WAIT:
        return None
    step_rate = result.images / max(result.seconds - result.data_seconds, 1e-9)
    if workers > 0:
        per_worker = result.images / result.seconds / workers
    else:
        per_worker = result.images / result.data_seconds
    needed = math.ceil(step_rate / per_worker)
    return (
        f"the step waited for data {share:.0%} of the epoch with data.num_workers={workers}: "
        f"a worker prepares about {per_worker:.0f} images/s and the step takes "
        f"{step_rate:.0f} images/s, so about {needed} worker{'s' * (needed != 1)} would keep up "
        f"({available_cores()} CPU cores available to this process)"
    )


def mixup_batch(
    images: Tensor,
    boxes: Tensor,
    labels: Tensor,
    rng: np.random.Generator,
    alpha: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Blend each image with another of the batch (weight ~ Beta(alpha, alpha)) and give
    it the boxes of both: padded targets ``[B, G, 4]``, ``[B, G]`` become ``[B, 2G, 4]``,
    ``[B, 2G]``, its own boxes first."""
    batch_size = images.shape[0]
    weight = float(rng.beta(alpha, alpha))
    partner = torch.from_numpy(rng.permutation(batch_size)).to(images.device)
    mixed = images.float() * weight + images[partner].float() * (1 - weight)
    return mixed, torch.cat([boxes, boxes[partner]], 1), torch.cat([labels, labels[partner]], 1)


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
    backward through the scaler, the sparsity subgradient, gradient clipping, the
    optimiser and scheduler steps.

    Nothing is read back from the device between logged iterations, so a GPU never
    waits for the host. Every ``options.log_interval`` iterations, and at the last
    iteration of the call, one read (after one all-reduce when distributed) brings the
    mean losses, the count of non-finite losses since the previous read and the ranks'
    stop requests; the losses and the LR go to the writer and the progress bar. A
    non-finite loss found at a logged iteration stops the run before that iteration's
    update; one that an unlogged iteration met is reported with its iteration (the
    model in memory then holds bad updates; the last checkpoint is older and good).
    Without a process group a stop request ends the call after the iteration it arrives
    in; with one, at the next logged iteration, where all ranks agree.
    """
    model, device, optimizer, scaler = parts.model, parts.device, parts.optimizer, parts.scaler
    model.train()
    start = time.perf_counter()
    images_seen = 0
    progress = progress_bar(loader, desc=f"epoch {epoch + 1}", disable=not context.is_main)
    data_seconds, waiting_since = 0.0, None
    # On the device: non-finite losses since the last read, and the first one's iteration.
    bad_losses = torch.zeros((), device=device)
    first_bad = torch.full((), -1.0, device=device)
    unread: dict[str, Tensor] | None = None  # the last iteration's losses, if not read

    def result(stop_reason: str | None = None, message: str = "") -> EpochResult:
        return EpochResult(
            stop_reason=stop_reason,
            message=message,
            images=images_seen,
            seconds=time.perf_counter() - start,
            data_seconds=data_seconds,
        )

    def read(losses: dict[str, Tensor]) -> tuple[dict[str, float], str | None, str | None]:
        """The one host read: mean losses, what the ranks voted for (``signal`` when one
        asked to stop, ``checkpoint`` when one's checkpoint is due, else None) and the
        message of a non-finite loss (None when all were finite)."""
        due_in = options.checkpoint_due_in
        due = due_in is not None and time.perf_counter() - start >= due_in
        votes = torch.tensor([float(stop.requested), float(due)], device=device)
        losses_now = torch.stack([value.detach().float() for value in losses.values()])
        shared = all_reduce_sum(torch.cat([losses_now, bad_losses[None], votes]), context)
        numbers = torch.cat([shared, first_bad[None]]).tolist()
        values = {
            key: number / context.world_size for key, number in zip(losses, numbers, strict=False)
        }
        bad, stop_votes, due_votes, first = numbers[len(losses) :]
        vote = "signal" if stop_votes > 0 else "checkpoint" if due_votes > 0 else None
        if not bad:
            return values, vote, None
        first = int(first)
        where = f"iteration {first} (epoch {epoch + 1})" if first > 0 else "another rank"
        if first == state.iteration + 1:
            message = (
                f"loss is {values['loss']} at {where}; stopped before the update, so the "
                "model is unchanged. Lower solver.lr or set solver.grad_clip_norm"
            )
        else:
            message = (
                f"loss became non-finite at {where}, found at iteration {state.iteration} "
                "(losses are read every train.log_interval iterations); the model took "
                "non-finite updates since. Lower solver.lr or set solver.grad_clip_norm"
            )
        return values, vote, message

    def log(values: dict[str, float], lr: float) -> None:
        writer.write("train", state.iteration, epoch, {**values, "lr": lr})
        progress.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{lr:.2e}", refresh=False)

    for batch in progress:
        if waiting_since is not None:
            data_seconds += time.perf_counter() - waiting_since
        if batch["images"].shape[0] == 0:
            waiting_since = time.perf_counter()
            continue
        images = batch["images"].to(device, non_blocking=True)
        boxes, labels = (item.to(device, non_blocking=True) for item in batch["targets"])
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
        nonfinite = ~torch.isfinite(loss.detach())
        bad_losses += nonfinite
        first_bad = torch.where(nonfinite & (first_bad < 0), state.iteration + 1, first_bad)
        logged = (state.iteration + 1) % options.log_interval == 0
        vote = None
        if logged:
            values, vote, bad = read(losses)
            if bad is not None:
                return result("nonfinite", bad)

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
        unread = None if logged else {key: value.detach() for key, value in losses.items()}
        if logged:
            log(values, lr)

        stop_at = options.stop_at_iteration
        asked = stop_at is not None and state.iteration >= stop_at
        local_stop = stop.requested and not context.is_distributed
        if vote or local_stop or asked:
            if unread is not None:
                values, _, bad = read(unread)
                log(values, lr)
                if bad is not None:
                    return result("nonfinite", bad)
            if vote == "signal" or local_stop:
                return result("signal", stop.reason or "stop requested")
            if asked:
                return result("stop_at", f"stopped at iteration {state.iteration} as asked")
            return result("checkpoint", "train.checkpoint_minutes passed")
        waiting_since = time.perf_counter()
    progress.close()
    if unread is not None:
        values, _, bad = read(unread)
        log(values, optimizer.param_groups[0]["lr"])
        if bad is not None:
            return result("nonfinite", bad)
    return result()
