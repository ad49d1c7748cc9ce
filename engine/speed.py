"""Inference speed, measured as users run it: decoded images in, detections in pixels
out, split into preprocessing, the network and post-processing; ours and torchvision's
SSD300 as runners timed call by call in one interleaved loop (benchmark.py is the
command).
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from data.records import IMAGE_EXTENSIONS, BadSampleError, read_image
from engine.inference import DetectorPipeline, NetworkRunner, SpeedOptions, grad_mode
from models.counting import count_flops
from utils.config import ConfigError
from utils.timing import run_interleaved, synchronize

logger = logging.getLogger(__name__)

PARTS = ("preprocess", "forward", "post")


def load_images(
    folder: Path | None, input_size: str, count: int, seed: int = 0
) -> list[np.ndarray]:
    """``count`` decoded RGB uint8 images: from ``folder`` (cycled) or random."""
    if folder is None:
        try:
            width, height = (int(side) for side in input_size.lower().split("x"))
        except ValueError:
            raise ConfigError(f"--input-size must be WIDTHxHEIGHT, got {input_size!r}") from None
        rng = np.random.default_rng(seed)
        return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]
    paths = sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_EXTENSIONS)
    images = []
    for path in paths:
        try:
            images.append(read_image(path))
        except BadSampleError as error:
            logger.warning("%s (skipped)", error)
    if not images:
        raise ConfigError(f"{folder}: no readable images")
    return [images[index % len(images)] for index in range(count)]


class Runner:
    """One system under test: a call on a list of images returning seconds per part.
    It names the network it runs, its input size, class count and speed paths."""

    name: str
    network: nn.Module
    input_size: int
    num_classes: int
    options: SpeedOptions

    def __call__(self, images: Sequence[np.ndarray]) -> dict[str, float]:
        raise NotImplementedError


class PipelineRunner(Runner):
    def __init__(self, name: str, pipeline: DetectorPipeline, num_classes: int) -> None:
        self.name = name
        self.pipeline = pipeline
        self.network = pipeline.model
        self.input_size = pipeline.image_size
        self.num_classes = num_classes
        self.options = pipeline.options

    def __call__(self, images: Sequence[np.ndarray]) -> dict[str, float]:
        pipeline, device = self.pipeline, self.pipeline.device
        with pipeline.grad_mode():
            return timed_parts(
                device,
                lambda _: pipeline.preprocess(images),
                lambda batch: pipeline.forward(batch),
                lambda outputs: pipeline.postprocess(outputs, [i.shape[:2] for i in images]),
            )


def peer_options(options: SpeedOptions) -> SpeedOptions:
    """The speed paths torchvision's SSD300 gets: every one ours gets, except BatchNorm
    folding, which does not apply (its VGG16 has no BatchNorm)."""
    return dataclasses.replace(options, fold_bn=False)


class TorchvisionNetwork(nn.Module):
    """torchvision SSD's backbone and head as one module, so that the same speed paths
    (NHWC, autocast, compile, CUDA graphs) wrap it as they wrap ours: normalised images
    -> box regression, class logits, and the feature maps (the anchors need their
    sizes)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.head = model.head

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = list(self.backbone(images).values())
        outputs = self.head(features)
        return outputs["bbox_regression"], outputs["cls_logits"], *features


class TorchvisionRunner(Runner):
    """torchvision's SSD300-VGG16 (random weights) with ``num_classes`` classes and the
    given speed paths, split into the same parts as ours: the tensor conversion and its
    transform (resize, normalise) / backbone and head / anchors, its post-processing
    and the copy of the detections to the host."""

    def __init__(self, device: torch.device, options: SpeedOptions, num_classes: int) -> None:
        from torchvision.models.detection import ssd300_vgg16

        self.name = "torchvision ssd300_vgg16"
        self.model = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=num_classes)
        self.model.eval().to(device)
        self.num_classes = num_classes
        self.options = options
        self.runner = NetworkRunner(TorchvisionNetwork(self.model), device=device, options=options)
        self.network = self.runner.module
        self.input_size = 300
        self.device = device

    def __call__(self, images: Sequence[np.ndarray]) -> dict[str, float]:
        model = self.model
        sizes = [tuple(image.shape[:2]) for image in images]

        def preprocess(_: Any) -> Any:
            tensors = [
                torch.from_numpy(image).to(self.device).permute(2, 0, 1).float() / 255.0
                for image in images
            ]
            return model.transform(tensors)[0]

        def forward(image_list: Any) -> Any:
            bbox_regression, cls_logits, *features = self.runner(image_list.tensors)
            head_outputs = {"bbox_regression": bbox_regression, "cls_logits": cls_logits}
            return head_outputs, features, image_list

        def post(state: Any) -> Any:
            head_outputs, features, image_list = state
            anchors = model.anchor_generator(image_list, features)
            detections = model.postprocess_detections(head_outputs, anchors, image_list.image_sizes)
            detections = model.transform.postprocess(detections, image_list.image_sizes, sizes)
            return [{key: value.cpu().numpy() for key, value in d.items()} for d in detections]

        with grad_mode(self.options):
            return timed_parts(self.device, preprocess, forward, post)


def timed_parts(device: torch.device, *steps: Callable[[Any], Any]) -> dict[str, float]:
    """Run ``preprocess``, ``forward``, ``post`` in a chain; seconds of each."""
    seconds, value = {}, None
    synchronize(device)
    for part, step in zip(PARTS, steps, strict=True):
        start = time.perf_counter()
        value = step(value)
        synchronize(device)
        seconds[part] = time.perf_counter() - start
    return seconds


def measure(
    runners: Sequence[Runner], images: Sequence[np.ndarray], *, warmup: int, repeats: int
) -> dict[str, dict[str, float]]:
    """Median ms per part (and in total) per runner, runners interleaved call by call
    (:func:`utils.timing.run_interleaved`)."""
    samples = run_interleaved(
        {runner.name: lambda runner=runner: runner(images) for runner in runners},
        warmup=warmup,
        repeats=repeats,
    )
    results = {}
    for name, calls in samples.items():
        medians = {f"{part}_ms": 1000 * statistics.median(c[part] for c in calls) for part in PARTS}
        medians["total_ms"] = 1000 * statistics.median(sum(c.values()) for c in calls)
        results[name] = medians
    return results


def describe(runner: Runner) -> dict[str, Any]:
    """What a runner was given and the size of its network."""
    return {
        "options": dataclasses.asdict(runner.options),
        "num_classes": runner.num_classes,
        "input_size": runner.input_size,
        "gflops": count_flops(runner.network, runner.input_size) / 1e9,
    }


def ratio_lines(results: dict[str, Any], names: list[str]) -> list[str]:
    """Each of our variants against torchvision's SSD300 (when timed) and against our
    first variant: total, forward and post-processing times."""
    ours = [name for name in names if name.startswith("ours")]
    references = [name for name in names if not name.startswith("ours")] + ours[:1]
    lines = []
    for reference in references:
        for name in ours:
            if name == reference:
                continue
            for key in ("batch_1", "batch_n"):
                rows = results[key]
                parts = ", ".join(
                    f"{part.removesuffix('_ms')} {rows[name][part] / rows[reference][part]:.3f}"
                    for part in ("total_ms", "forward_ms", "post_ms")
                )
                lines.append(f"{key.replace('_', ' ')}: {name} / {reference}: {parts}")
    return lines
