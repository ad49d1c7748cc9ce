"""SGD or AdamW with optional no-decay groups, and the per-iteration LR schedule."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from utils.config import SolverConfig


def build_optimizer(model: nn.Module, solver: SolverConfig) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW; with ``no_decay_norm_and_bias`` BatchNorm parameters,
    biases and other 1-D parameters (L2Norm scales) get no weight decay."""
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    if solver.no_decay_norm_and_bias:
        decay = [parameter for parameter in parameters if parameter.ndim > 1]
        no_decay = [parameter for parameter in parameters if parameter.ndim <= 1]
        groups = [
            {"params": decay, "weight_decay": solver.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
    else:
        groups = [{"params": parameters, "weight_decay": solver.weight_decay}]
    if solver.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=solver.lr)
    return torch.optim.SGD(groups, lr=solver.lr, momentum=solver.momentum)


class LRSchedule:
    """LR factor of an iteration: linear warm-up, then step decay or a cosine.

    Args:
        total_iterations: iterations of the whole run.
        iterations_per_epoch: converts epoch milestones to iterations.
        warmup_iterations: length of the warm-up (0 = none).
        warmup_factor: factor at iteration 0, rising linearly to 1.
        schedule: ``multistep`` or ``cosine``.
        milestones: epochs where ``multistep`` multiplies by ``gamma``.
        gamma: step decay factor.
        min_lr_factor: final factor of ``cosine``.
    """

    def __init__(
        self,
        *,
        total_iterations: int,
        iterations_per_epoch: int,
        warmup_iterations: int,
        warmup_factor: float,
        schedule: str,
        milestones: list[int],
        gamma: float,
        min_lr_factor: float,
    ) -> None:
        self.total_iterations = total_iterations
        self.warmup_iterations = warmup_iterations
        self.warmup_factor = warmup_factor
        self.schedule = schedule
        self.milestone_iterations = [epoch * iterations_per_epoch for epoch in milestones]
        self.gamma = gamma
        self.min_lr_factor = min_lr_factor
        self._nominal = (total_iterations, warmup_iterations, list(self.milestone_iterations))

    def fit_to(self, total_iterations: int) -> None:
        """Stretch the schedule over ``total_iterations`` (a time-budgeted run): the
        cosine spans them, multistep milestones keep their share of the run, and the
        warm-up keeps its length up to a quarter of the run."""
        nominal_total, nominal_warmup, nominal_milestones = self._nominal
        scale = total_iterations / max(nominal_total, 1)
        self.total_iterations = total_iterations
        self.milestone_iterations = [round(milestone * scale) for milestone in nominal_milestones]
        self.warmup_iterations = min(nominal_warmup, total_iterations // 4)

    def __call__(self, iteration: int) -> float:
        if self.schedule == "cosine":
            progress = min(iteration / max(self.total_iterations, 1), 1.0)
            factor = self.min_lr_factor + (1 - self.min_lr_factor) * 0.5 * (
                1 + math.cos(math.pi * progress)
            )
        else:
            passed = sum(1 for milestone in self.milestone_iterations if iteration >= milestone)
            factor = self.gamma**passed
        if iteration < self.warmup_iterations:
            alpha = iteration / self.warmup_iterations
            factor *= self.warmup_factor + (1 - self.warmup_factor) * alpha
        return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    solver: SolverConfig,
    *,
    epochs: int,
    iterations_per_epoch: int,
) -> LambdaLR:
    """A per-iteration scheduler: call ``step()`` after every optimiser step."""
    schedule = LRSchedule(
        total_iterations=epochs * iterations_per_epoch,
        iterations_per_epoch=iterations_per_epoch,
        warmup_iterations=solver.warmup_iterations,
        warmup_factor=solver.warmup_factor,
        schedule=solver.schedule,
        milestones=solver.milestones,
        gamma=solver.gamma,
        min_lr_factor=solver.min_lr_factor,
    )
    return LambdaLR(optimizer, schedule)
