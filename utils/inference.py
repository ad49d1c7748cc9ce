"""Inference from decoded images to detections in pixels, with the speed paths as options.

Each path is off by default and tested for equal outputs (``tests/test_inference.py``):

- ``channels_last``: NHWC activations (oneDNN and cuDNN pick faster conv kernels);
- ``fold_bn``: BatchNorm folded into the conv before it (``models/folding.py``);
- ``inference_mode``: ``torch.inference_mode`` instead of ``torch.no_grad`` (no view or
  version-counter tracking);
- ``compile``: ``torch.compile`` of the network (Inductor; needs a C++ compiler on CPU);
- ``autocast``: bf16 or fp16 autocast on CUDA (the post-processing stays in float32);
- ``cuda_graphs``: the network's forward captured once per input shape in a CUDA graph
  and replayed, which removes the per-kernel launch cost at small batches.

Post-processing (``layers/postprocess.py``) works on the whole batch at once, with no
loop over images or classes on GPUs and a few host synchronisations per batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import torch
from torch import Tensor, nn

from models.folding import fold_batchnorm

logger = logging.getLogger(__name__)

AUTOCAST_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class SpeedOptions:
    """Which speed paths to use (see the module docstring)."""

    channels_last: bool = False
    fold_bn: bool = False
    inference_mode: bool = False
    compile: bool = False
    autocast: Literal["none", "bf16", "fp16"] = "none"
    cuda_graphs: bool = False


def grad_mode(options: SpeedOptions) -> AbstractContextManager:
    """``torch.inference_mode`` with ``options.inference_mode``, else ``torch.no_grad``."""
    return torch.inference_mode() if options.inference_mode else torch.no_grad()


class NetworkRunner:
    """A network's forward with the speed paths that apply to any network: NHWC
    activations, autocast, ``torch.compile`` and CUDA-graph replay (``fold_bn`` is the
    caller's, since it needs to know the network's BatchNorm layers). The network
    takes one batch tensor and returns a tensor or a tuple of tensors; the runner
    returns them as a tuple, floating-point ones in float32.

    Args:
        network: the module (switched to eval mode, moved to ``device``).
        device: where it runs.
        options: the speed paths to use.
    """

    def __init__(self, network: nn.Module, *, device: torch.device, options: SpeedOptions) -> None:
        if options.autocast != "none" and device.type != "cuda":
            raise ValueError(f"autocast={options.autocast} needs CUDA; the device is {device}")
        if options.cuda_graphs and device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device; the device is {device}")
        network = network.eval().to(device)
        if options.channels_last:
            network = network.to(memory_format=torch.channels_last)
        self.module = network
        self.callable: nn.Module = torch.compile(network) if options.compile else network
        self.device = device
        self.options = options
        self.autocast_dtype = AUTOCAST_DTYPES[options.autocast]
        self._graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, Tensor, tuple]] = {}

    def __call__(self, batch: Tensor) -> tuple[Tensor, ...]:
        """The outputs for ``batch`` ``[B, 3, H, W]``; call under no_grad/inference_mode."""
        if self.options.cuda_graphs:
            return self._replay(batch)
        return self._run(batch)

    def _run(self, batch: Tensor) -> tuple[Tensor, ...]:
        if self.options.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        autocast = (
            torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else nullcontext()
        )
        with autocast:
            outputs = self.callable(batch)
        outputs = outputs if isinstance(outputs, tuple | list) else (outputs,)
        return tuple(output.float() if output.is_floating_point() else output for output in outputs)

    def _replay(self, batch: Tensor) -> tuple[Tensor, ...]:
        key = tuple(batch.shape)
        if key not in self._graphs:
            static_input = batch.clone()
            # Warm up on a side stream (cuDNN autotuning, allocator), then capture.
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(3):
                    self._run(static_input)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_output = self._run(static_input)
            self._graphs[key] = (graph, static_input, static_output)
        graph, static_input, static_output = self._graphs[key]
        static_input.copy_(batch)
        graph.replay()
        # The graph overwrites its outputs at the next replay: hand out copies.
        return tuple(output.clone() for output in static_output)


class InferencePipeline:
    """Preprocessing, network and post-processing for lists of RGB ``uint8`` images.

    Args:
        model: the detector (switched to eval mode; folded in place with ``fold_bn``).
        postprocessor: turns ``(loc, conf)`` into normalised detections.
        image_size: the model's input side.
        device: where the network runs.
        options: the speed paths to use.
    """

    def __init__(
        self,
        model: nn.Module,
        postprocessor: nn.Module,
        *,
        image_size: int,
        device: torch.device,
        options: SpeedOptions = SpeedOptions(),
    ) -> None:
        model.eval()
        if options.fold_bn:
            logger.info("folded %d BatchNorm layers", fold_batchnorm(model))
        self.runner = NetworkRunner(model, device=device, options=options)
        self.model = self.runner.module
        self.postprocessor = postprocessor.to(device)
        self.image_size = image_size
        self.device = device
        self.options = options

    def grad_mode(self):
        return grad_mode(self.options)

    def preprocess(self, images: Sequence[np.ndarray]) -> Tensor:
        """``[B, 3, S, S]`` uint8 on the device, from RGB ``[H, W, 3]`` uint8 images."""
        size = self.image_size
        batch = np.empty((len(images), size, size, 3), dtype=np.uint8)
        for index, image in enumerate(images):
            batch[index] = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
        tensor = torch.from_numpy(batch).to(self.device, non_blocking=True)  # [B, S, S, 3]
        tensor = tensor.permute(0, 3, 1, 2)  # [B, 3, S, S], an NHWC view
        if not self.options.channels_last:
            tensor = tensor.contiguous()
        return tensor

    def forward(self, batch: Tensor) -> tuple[Tensor, Tensor]:
        """``loc`` ``[B, P, 4]`` and ``conf`` ``[B, P, C]`` (float32) for a preprocessed batch.
        Call inside :meth:`grad_mode`."""
        loc, conf = self.runner(batch)
        return loc, conf

    def postprocess(
        self, loc: Tensor, conf: Tensor, sizes: Sequence[tuple[int, int]]
    ) -> list[dict[str, np.ndarray]]:
        """Detections per image in its own pixels: ``boxes`` ``[D, 4]`` xyxy float32,
        ``scores`` ``[D]``, ``labels`` ``[D]`` (1..C-1); ``sizes`` are ``(height, width)``."""
        detections = self.postprocessor(loc, conf)
        scale = torch.tensor(
            [[width, height, width, height] for height, width in sizes],
            dtype=torch.float32,
            device=loc.device,
        )  # [B, 4]
        return [
            {
                "boxes": (detection["boxes"] * scale[index]).cpu().numpy(),
                "scores": detection["scores"].cpu().numpy(),
                "labels": detection["labels"].cpu().numpy(),
            }
            for index, detection in enumerate(detections)
        ]

    def __call__(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Detections for RGB uint8 images (any sizes), end to end."""
        with self.grad_mode():
            loc, conf = self.forward(self.preprocess(images))
            return self.postprocess(loc, conf, [image.shape[:2] for image in images])
