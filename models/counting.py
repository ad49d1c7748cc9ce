"""How big a model is: parameters, and FLOPs of one forward pass counted on a ``meta``
copy (shapes only: no memory, no compute)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


def meta_forward(module: nn.Module, image_size: int) -> Any:
    """``module``'s output for one ``image_size`` square image, shapes only: the pass
    runs on a copy on the ``meta`` device (no memory, no compute)."""
    meta_copy = copy.deepcopy(module).to("meta").eval()
    return meta_copy(torch.zeros(1, 3, image_size, image_size, device="meta"))


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def count_flops(model: nn.Module, image_size: int) -> int:
    """FLOPs of one forward pass at batch 1 (``torch.utils.flop_counter``; a multiply-add
    counts as 2). Counted on a ``meta`` copy: no compute, no memory."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        meta_forward(model, image_size)
    return int(counter.get_total_flops())
