"""Inference from decoded images to detections in pixels, with the speed paths as options.

Each path is off by default and tested for equal outputs (``tests/test_inference.py``):

- ``channels_last``: NHWC activations (oneDNN and cuDNN pick faster conv kernels);
  ``auto`` is NHWC on CUDA and on CPUs with AVX-512 (utils.device.resolve_channels_last);
- ``fold_bn``: BatchNorm folded into the conv before it (``models/folding.py``);
- ``inference_mode``: ``torch.inference_mode`` instead of ``torch.no_grad`` (no view or
  version-counter tracking);
- ``compile``: ``torch.compile`` of the network (Inductor; needs a C++ compiler on CPU);
- ``autocast``: bf16 or fp16 autocast (fp16 on CUDA only; ``auto`` picks what the device
  runs natively, see utils.device.resolve_precision); the post-processing stays in float32;
- ``cuda_graphs``: the network's forward captured once per input shape in a CUDA graph
  and replayed, which removes the per-kernel launch cost at small batches.

Post-processing (``layers/postprocess.py``) works on the whole batch at once, with no
loop over images or classes on GPUs and a few host synchronisations per batch.

:class:`DetectorPipeline` is the one path from images to detections in pixels, run by
PyTorch (:class:`InferencePipeline`) or ONNX Runtime (:class:`OnnxRuntimePipeline`):
test.py and training-time evaluation (through :func:`predict`), demo.py, benchmark.py
and prune.py's timing all run it.
"""

from __future__ import annotations

import abc
import atexit
import dataclasses
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from data.transforms import resize_batch
from models.build import build_postprocessor
from models.detector import SingleShotDetector
from models.folding import fold_batchnorm
from utils.config import Config, ConfigError
from utils.device import (
    AmpChoice,
    Backend,
    DeviceError,
    autocast_context,
    resolve_channels_last,
    resolve_precision,
)
from utils.distributed import DistributedContext, gather_to_main
from utils.log import progress_bar
from utils.timing import synchronize

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SpeedOptions:
    """Which speed paths to use (see the module docstring)."""

    channels_last: bool | Literal["auto"] = False
    fold_bn: bool = False
    inference_mode: bool = False
    compile: bool = False
    autocast: AmpChoice = "none"
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
        self.precision = resolve_precision(options.autocast, device, origin="--amp")
        self.autocast_dtype = self.precision.dtype
        if options.cuda_graphs and device.type != "cuda":
            raise DeviceError(f"CUDA graphs need a CUDA device; the device is {device}")
        if options.channels_last == "auto":
            nhwc, why = resolve_channels_last("auto", device, origin="--channels-last")
            logger.info("layout %s (%s)", "NHWC" if nhwc else "NCHW", why)
            options = dataclasses.replace(options, channels_last=nhwc)
        network = network.eval().to(device)
        if options.channels_last:
            network = network.to(memory_format=torch.channels_last)
        self.module = network
        self.callable: nn.Module = torch.compile(network) if options.compile else network
        self.device = device
        self.options = options
        self._graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, Tensor, tuple]] = {}

    def __call__(self, batch: Tensor) -> tuple[Tensor, ...]:
        """The outputs for ``batch`` ``[B, 3, H, W]``; call under no_grad/inference_mode."""
        if self.options.cuda_graphs:
            return self._replay(batch)
        return self._run(batch)

    def _run(self, batch: Tensor) -> tuple[Tensor, ...]:
        layout = torch.channels_last if self.options.channels_last else torch.contiguous_format
        batch = batch.contiguous(memory_format=layout)
        with autocast_context(self.device, self.autocast_dtype):
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


def prepare_for_inference(model: nn.Module, options: SpeedOptions) -> nn.Module:
    """``model`` in eval mode with BatchNorm folded into its convs when
    ``options.fold_bn`` (in place); :class:`NetworkRunner` does the rest (device,
    memory format, compile)."""
    model.eval()
    if options.fold_bn:
        logger.info("folded %d BatchNorm layers into convs", fold_batchnorm(model))
    return model


def to_pixels(
    detections: Sequence[dict[str, Tensor]], sizes: Sequence[tuple[int, int]]
) -> list[dict[str, np.ndarray]]:
    """Normalised detections (the post-processor's) in each image's own pixels on the
    host: ``boxes`` ``[D, 4]`` xyxy float32, ``scores`` ``[D]``, ``labels`` ``[D]``
    (1..C-1); ``sizes`` are ``(height, width)``. The batch comes back in one copy."""
    if not detections:
        return []
    device = detections[0]["boxes"].device
    scale = torch.tensor(
        [[width, height, width, height] for height, width in sizes], dtype=torch.float32
    ).to(device, non_blocking=True)  # [B, 4]
    packed = torch.cat(
        [
            torch.cat(
                [
                    detection["boxes"].float() * scale[index],
                    detection["scores"].float()[:, None],
                    # Labels are small integers: exact in float32.
                    detection["labels"].float()[:, None],
                ],
                dim=1,
            )
            for index, detection in enumerate(detections)
        ]
    )  # [N, 6]
    host = packed.cpu().numpy()
    counts = [len(detection["scores"]) for detection in detections]
    results = []
    for rows in np.split(host, np.cumsum(counts)[:-1]):
        results.append(
            {
                "boxes": np.ascontiguousarray(rows[:, :4]),
                "scores": np.ascontiguousarray(rows[:, 4]),
                "labels": rows[:, 5].astype(np.int64),
            }
        )
    return results


class DetectorPipeline(abc.ABC):
    """Preprocessing, network and post-processing: RGB ``uint8`` images in, detections
    in pixels out. Every script that runs a detector runs it through a subclass: PyTorch
    (:class:`InferencePipeline`) or ONNX Runtime (:class:`OnnxRuntimePipeline`).

    Args:
        model: the PyTorch detector (for its description: priors, GFLOPs), or None.
        image_size: the model's input side.
        device: where the batches go.
        options: the speed paths in use.
    """

    def __init__(
        self,
        *,
        model: nn.Module | None,
        image_size: int,
        device: torch.device,
        options: SpeedOptions,
    ) -> None:
        self.model = model
        self.image_size = image_size
        self.device = device
        self.options = options

    def grad_mode(self) -> AbstractContextManager:
        return grad_mode(self.options)

    def preprocess(self, images: Sequence[np.ndarray]) -> Tensor:
        """``[B, 3, S, S]`` uint8 on the device, from RGB ``[H, W, 3]`` uint8 images."""
        batch = resize_batch(images, self.image_size)
        tensor = torch.from_numpy(batch).to(self.device, non_blocking=True)  # [B, S, S, 3]
        tensor = tensor.permute(0, 3, 1, 2)  # [B, 3, S, S], an NHWC view
        if not self.options.channels_last:
            tensor = tensor.contiguous()
        return tensor

    @abc.abstractmethod
    def forward(self, batch: Tensor) -> tuple[Any, ...]:
        """The network's outputs for a preprocessed batch. Call inside :meth:`grad_mode`."""

    @abc.abstractmethod
    def postprocess(
        self, outputs: tuple[Any, ...], sizes: Sequence[tuple[int, int]]
    ) -> list[dict[str, np.ndarray]]:
        """Detections per image in its own pixels (``boxes`` xyxy, ``scores``,
        ``labels``) from the :meth:`forward` outputs; ``sizes`` are ``(height, width)``."""

    def __call__(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Detections for RGB uint8 images (any sizes), end to end."""
        with self.grad_mode():
            outputs = self.forward(self.preprocess(images))
            return self.postprocess(outputs, [image.shape[:2] for image in images])

    def stream(
        self, batches: Iterable[Sequence[np.ndarray]]
    ) -> Iterator[tuple[Sequence[np.ndarray], list[dict[str, np.ndarray]]]]:
        """The throughput mode: each batch of ``batches`` with its detections, in order,
        as :meth:`__call__` gives them. A helper thread takes the next batch from
        ``batches`` (reading a video frame, say) and preprocesses it (resize, layout,
        copy to the device) while the current one runs through the network and the
        post-processing, so the device does not wait for the host between batches."""
        iterator = iter(batches)

        def fetch() -> tuple[Sequence[np.ndarray], Tensor] | None:
            images = next(iterator, None)
            return None if images is None else (images, self.preprocess(images))

        with ThreadPoolExecutor(max_workers=1) as helper:
            upcoming = helper.submit(fetch)
            while (ready := upcoming.result()) is not None:
                upcoming = helper.submit(fetch)
                images, batch = ready
                with self.grad_mode():
                    outputs = self.forward(batch)
                    detections = self.postprocess(outputs, [image.shape[:2] for image in images])
                yield images, detections


class InferencePipeline(DetectorPipeline):
    """The PyTorch detector and its post-processor.

    Args:
        model: the detector (prepared by :func:`prepare_for_inference`: eval mode,
            folded in place with ``fold_bn``).
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
        self.runner = NetworkRunner(
            prepare_for_inference(model, options), device=device, options=options
        )
        super().__init__(
            model=self.runner.module,
            image_size=image_size,
            device=device,
            options=self.runner.options,  # the layout resolved
        )
        self.postprocessor = postprocessor.to(device)

    def forward(self, batch: Tensor) -> tuple[Tensor, Tensor]:
        """``loc`` ``[B, P, 4]`` and ``conf`` ``[B, P, C]`` (float32)."""
        loc, conf = self.runner(batch.to(self.device, non_blocking=True))
        return loc, conf

    def postprocess(
        self, outputs: tuple[Tensor, Tensor], sizes: Sequence[tuple[int, int]]
    ) -> list[dict[str, np.ndarray]]:
        return to_pixels(self.postprocessor(*outputs), sizes)


def onnx_session(path: str | Path, *, threads: int | None = None, spinning: bool = True) -> Any:
    """An ONNX Runtime session of ``path`` on the CPU (``threads``: intra-op threads,
    None for its default; ``spinning``: see :class:`OnnxRuntimePipeline`)."""
    import onnxruntime

    session_options = onnxruntime.SessionOptions()
    if threads is not None:
        session_options.intra_op_num_threads = threads
    if not spinning:
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session_options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(
        str(path), session_options, providers=["CPUExecutionProvider"]
    )


def run_onnx(path: str | Path, images: Tensor) -> list[Tensor]:
    """The outputs of any exported graph (network only, decoded, or end to end) for
    one ``images`` input, run by ONNX Runtime on the CPU."""
    outputs = onnx_session(path).run(None, {"images": images.cpu().numpy()})
    return [torch.from_numpy(output) for output in outputs]


class OnnxRuntimePipeline(DetectorPipeline):
    """The end-to-end ONNX detector (:func:`engine.export.export_end_to_end`: network and
    post-processing in one graph) run by ONNX Runtime on the CPU.

    Args:
        path: the ``.onnx`` file.
        image_size: the model's input side.
        model: the PyTorch model it was exported from (kept for its description:
            priors, GFLOPs), or None.
        threads: ONNX Runtime's intra-op threads (None: its default, all cores).
        spinning: let ONNX Runtime's threads spin-wait after a run (its default: the
            next run starts sooner). They hold the cores meanwhile and slow whatever runs
            next on them, so benchmarks that interleave runners turn it off.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        image_size: int,
        model: nn.Module | None = None,
        threads: int | None = None,
        spinning: bool = True,
    ) -> None:
        self.session = onnx_session(path, threads=threads, spinning=spinning)
        self.path = Path(path)
        self.threads = threads
        self.spinning = spinning
        super().__init__(
            model=model, image_size=image_size, device=torch.device("cpu"), options=SpeedOptions()
        )

    def grad_mode(self) -> AbstractContextManager:
        return nullcontext()

    def without_spinning(self) -> OnnxRuntimePipeline:
        """The same graph in a session whose threads do not spin after a run."""
        return OnnxRuntimePipeline(
            self.path,
            image_size=self.image_size,
            model=self.model,
            threads=self.threads,
            spinning=False,
        )

    def forward(self, batch: Tensor) -> tuple[np.ndarray, ...]:
        """``boxes`` ``[B, D, 4]`` (input pixels), ``scores``, ``labels``, ``count``."""
        return tuple(self.session.run(None, {"images": batch.cpu().contiguous().numpy()}))

    def postprocess(
        self, outputs: tuple[np.ndarray, ...], sizes: Sequence[tuple[int, int]]
    ) -> list[dict[str, np.ndarray]]:
        boxes, scores, labels, counts = outputs
        results = []
        for index, ((height, width), count) in enumerate(zip(sizes, counts, strict=True)):
            scale = np.array([width, height, width, height], np.float32) / self.image_size
            results.append(
                {
                    "boxes": boxes[index, :count] * scale,
                    "scores": scores[index, :count],
                    "labels": labels[index, :count],
                }
            )
        return results


def _onnxruntime_pipeline(
    model: SingleShotDetector,
    config: Config,
    *,
    onnx_path: str | Path | None = None,
    calibration: Callable[[], list[np.ndarray]] | None = None,
    threads: int | None = None,
) -> OnnxRuntimePipeline:
    """The ONNX Runtime pipeline of ``model``: from ``onnx_path`` when given (an
    end-to-end export of it), else exported now with the config's post-processing
    into a temporary folder removed at exit. With ``calibration`` (a function giving
    the calibration batches) the graph is quantized to int8 first
    (:mod:`engine.quantize`)."""
    if onnx_path is None or calibration is not None:
        folder = Path(tempfile.mkdtemp(prefix="fssd_onnx_"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    from engine.export import export_detector

    if onnx_path is None:
        onnx_path = export_detector(model.eval(), config, folder / "detector.onnx")
        logger.info("exported the detector end to end to %s", onnx_path)
    if calibration is not None:
        from engine.quantize import quantize_end_to_end

        onnx_path = quantize_end_to_end(onnx_path, folder / "detector_int8.onnx", calibration())
    return OnnxRuntimePipeline(
        onnx_path, image_size=config.model.image_size, model=model, threads=threads
    )


def build_pipeline(
    model: SingleShotDetector,
    config: Config,
    *,
    backend: Backend,
    device: torch.device,
    options: SpeedOptions,
    onnx_path: str | Path | None = None,
    calibration: Callable[[], list[np.ndarray]] | None = None,
) -> DetectorPipeline:
    """The pipeline a script runs: PyTorch's with ``options`` on ``device``, or
    (``backend="onnxruntime"``) the end-to-end ONNX graph in ONNX Runtime on the CPU
    (whatever ``device`` is: it says so when that is a GPU),
    exported from ``model`` after BatchNorm folding when ``options.fold_bn``, and
    quantized to int8 with ``calibration``."""
    if backend == "torch":
        if calibration is not None:
            raise ConfigError("--int8 runs in ONNX Runtime: add --backend onnxruntime")
        return InferencePipeline(
            model,
            build_postprocessor(config, model.priors_cxcywh),
            image_size=config.model.image_size,
            device=device,
            options=options,
        )
    if backend != "onnxruntime":
        raise ValueError(f"unknown backend {backend!r}: torch or onnxruntime")
    if device.type != "cpu":
        logger.warning(
            "ONNX Runtime runs here with its CPU provider: the detector runs on the CPU, "
            "not on %s (--backend torch runs on the GPU)",
            device,
        )
    model = prepare_for_inference(model, SpeedOptions(fold_bn=options.fold_bn))
    return _onnxruntime_pipeline(model, config, onnx_path=onnx_path, calibration=calibration)


@dataclasses.dataclass
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


def predict_on_ranks(
    pipeline: DetectorPipeline, loader: DataLoader, context: DistributedContext
) -> tuple[list[dict[str, np.ndarray] | None] | None, Timing]:
    """:func:`predict` on this rank's share of the loader's batches (``build_eval_loader``
    with the rank and world size), the detections gathered on rank 0 (None on the
    others); this rank's timing. One process: :func:`predict`."""
    detections, timing = predict(pipeline, loader, show_progress=context.is_main)
    owned = [index for batch in loader.batch_sampler for index in batch]
    return gather_to_main(detections, owned, context), timing


def predict(
    pipeline: DetectorPipeline, loader: DataLoader, *, show_progress: bool = True
) -> tuple[list[dict[str, np.ndarray] | None], Timing]:
    """Detections for every image of the loader's dataset (resized by the dataset's
    evaluation transform) in its original pixels.

    Returns a list indexed like the dataset (``None`` for images that could not be
    read), with :func:`to_pixels`'s arrays; and the forward/post-processing timing
    (CUDA-synchronised).
    """
    results: list[dict[str, np.ndarray] | None] = [None] * len(loader.dataset)
    timing = Timing()
    device = pipeline.device
    with pipeline.grad_mode():
        for batch in progress_bar(loader, desc="predict", disable=not show_progress):
            if batch["images"].shape[0] == 0:
                continue
            synchronize(device)
            start = time.perf_counter()
            outputs = pipeline.forward(batch["images"])
            synchronize(device)
            middle = time.perf_counter()
            detections = pipeline.postprocess(outputs, batch["orig_sizes"])
            timing.forward_seconds += middle - start
            timing.postprocess_seconds += time.perf_counter() - middle
            timing.images += len(detections)
            for index, detection in zip(batch["indices"], detections, strict=True):
                results[index] = detection
    return results, timing
