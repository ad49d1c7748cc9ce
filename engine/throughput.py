"""Training throughput on this machine: the training step on its own (data loading
excluded), the data loader on its own, and the step's share of the machine's limit
(``engine/machine.py``). ``benchmark.py --train`` prints them; ``tools.make_config``
times the step to choose a network that fits a time budget.

The step is :func:`engine.training.train_one_epoch` itself, over batches held in
memory: forward in the precision and memory format the run uses (``train.amp``,
``train.channels_last``), multibox loss with matching, backward, the optimiser and the
LR schedule, as a training run does them.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from data.loader import build_dataset, build_train_loader
from data.sources import prepare_data, resolve_class_names
from engine.training import (
    EpochOptions,
    StopRequest,
    TrainingParts,
    TrainState,
    train_one_epoch,
)
from models.build import build_loss, build_model
from models.counting import count_flops
from utils.config import Config
from utils.device import resolve_channels_last, resolve_precision
from utils.distributed import DistributedContext
from utils.log import MetricsWriter
from utils.optim import build_optimizer, build_scheduler

# A training step costs about three forwards (forward, and a backward twice as dear).
TRAINING_FLOPS_PER_FORWARD = 3


def synthetic_batches(
    config: Config, batch_size: int, count: int, device: torch.device
) -> list[dict[str, Any]]:
    """``count`` batches of random images with one box each, as the loader yields them
    (NHWC uint8 images, padded targets)."""
    generator = torch.Generator().manual_seed(0)
    size = config.model.image_size
    boxes = torch.tensor([[[0.25, 0.25, 0.75, 0.75]]], device=device).expand(batch_size, 1, 4)
    labels = torch.ones(batch_size, 1, dtype=torch.int64, device=device)
    batches = []
    for _ in range(count):
        images = torch.randint(0, 256, (batch_size, size, size, 3), generator=generator)
        images = images.to(torch.uint8).to(device).permute(0, 3, 1, 2)
        batches.append({"images": images, "targets": (boxes, labels)})
    return batches


def time_training_step(
    config: Config,
    batches: Sequence[dict[str, Any]],
    *,
    device: torch.device,
    warmup: int = 1,
) -> float:
    """Training images/s of the config's network (random initial weights) over
    ``batches`` after ``warmup`` untimed ones (taken from the front of ``batches``)."""
    dtype = resolve_precision(config.train.amp, device, origin="train.amp").dtype
    channels_last, _ = resolve_channels_last(config.train.channels_last, device)
    model = build_model(config, load_weights=False).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config.solver)
    parts = TrainingParts(
        model=model,
        loss_fn=build_loss(config, model.priors_cxcywh).to(device),
        optimizer=optimizer,
        scheduler=build_scheduler(
            optimizer, config.solver, epochs=1, iterations_per_epoch=max(len(batches), 1)
        ),
        scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
        device=device,
    )
    options = EpochOptions(
        autocast_dtype=dtype,
        channels_last=channels_last,
        grad_clip_norm=config.solver.grad_clip_norm,
        seed=config.train.seed,
        log_interval=10**9,
    )
    common = {
        "epoch": 0,
        "state": TrainState(),
        "context": DistributedContext(),
        "writer": MetricsWriter("", enabled=False),
        "stop": StopRequest(),
        "options": options,
    }
    train_one_epoch(parts, batches[:warmup], **common)
    result = train_one_epoch(parts, batches[warmup:], **common)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result.images / result.seconds


def training_images_per_second(
    config: Config, *, batch_size: int = 4, iterations: int = 3, device: str = "cpu"
) -> float:
    """Training images/s of the config's network on this machine at its input size, on
    random images with one box each (:func:`time_training_step` after one untimed
    step). Data loading is not counted (loader workers run beside the step)."""
    torch_device = torch.device(device)
    batches = synthetic_batches(config, batch_size, iterations + 1, torch_device)
    return time_training_step(config, batches, device=torch_device)


def time_loader(loader: Any, batches: int) -> tuple[float, list[dict[str, Any]]]:
    """Images/s the loader delivers over ``batches`` batches after its first (the
    workers' start-up is not counted), and the batches it delivered."""
    iterator = iter(loader)
    first = next(iterator)
    start = time.perf_counter()
    delivered = [first, *itertools.islice(iterator, batches)]
    seconds = time.perf_counter() - start
    images = sum(batch["images"].shape[0] for batch in delivered[1:])
    return images / seconds, delivered


@dataclass(frozen=True)
class TrainingThroughput:
    """What ``benchmark.py --train`` measured."""

    step_images_per_second: float
    step_gflops_per_second: float
    forward_gflops: float
    loader_images_per_second: float
    loader_workers: int
    precision: str
    channels_last: bool
    batch_size: int

    @property
    def per_worker(self) -> float:
        """The loader's images/s per worker (per main process without workers)."""
        return self.loader_images_per_second / max(self.loader_workers, 1)

    def workers_for(self, images_per_second: float) -> int:
        """Loader workers (cores) that keep a step of ``images_per_second`` fed."""
        return math.ceil(images_per_second / self.per_worker)


def measure_training(
    config: Config, *, device: torch.device, batches: int = 10
) -> TrainingThroughput:
    """The config's training data through its loader (``batches`` batches after the
    first), then the training step on those batches (the first untimed)."""
    prepare_data(config)
    class_names = resolve_class_names(config)
    dataset = build_dataset(config, "train", class_names)
    loader, sampler = build_train_loader(dataset, config)
    sampler.set_epoch(0)
    loader_rate, delivered = time_loader(loader, batches)
    workers = loader.num_workers
    del loader  # its workers stop before the step is timed
    delivered = [{key: batch[key] for key in ("images", "targets")} for batch in delivered]
    step_rate = time_training_step(config, delivered, device=device)
    precision = resolve_precision(config.train.amp, device, origin="train.amp")
    forward_gflops = count_flops(build_model(config, load_weights=False), config.model.image_size)
    return TrainingThroughput(
        step_images_per_second=step_rate,
        step_gflops_per_second=TRAINING_FLOPS_PER_FORWARD * forward_gflops / 1e9 * step_rate,
        forward_gflops=forward_gflops / 1e9,
        loader_images_per_second=loader_rate,
        loader_workers=workers,
        precision="float32" if precision.dtype is None else precision.name,
        channels_last=resolve_channels_last(config.train.channels_last, device)[0],
        batch_size=config.train.batch_size,
    )
